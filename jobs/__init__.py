"""How stages run: a sweep's jobs (``jobs.sweep``: presets x methods x seeds in dependent
groups), executed in this process, as local subprocesses or as Slurm job arrays through
submitit (``jobs.executors``), and watched from the sweep folder alone (``jobs.status``)."""
