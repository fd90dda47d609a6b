"""Plans of a run on a card that is not attached: the real steps compiled for its GPU, memory and kernels read
from the compiler."""
