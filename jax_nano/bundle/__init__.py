"""A folder that runs the project on an offline machine with its own Python stack: the target as data, the wheels
it lacks, the bundle's assembly, and the job runner that `run.sh` calls on the target."""
