"""Data, framework-free: token stores, the batches both trainers read, where stores come from, the tokenizer."""
