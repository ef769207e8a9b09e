"""How stages run. Today: in-process, one job after another (``jobs.sweep``). The Slurm /
submitit issue adds local and Slurm executors, arrays, DDP and preemption-safe requeue on
top of the same job model: a job is (config, method, seed) and runs the stages in order."""
