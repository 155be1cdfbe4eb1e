"""The sweep engine behind ``python train.py -m hparams_search=optuna``.

* :mod:`~imgcap.sweep.space`: Hydra's sweep syntax -> Optuna distributions -> overrides;
* :mod:`~imgcap.sweep.storage`: where a study lives (a journal file by default);
* :mod:`~imgcap.sweep.pruners`: the pruner choice;
* :mod:`~imgcap.sweep.trial_link`: the job's trial, from the environment;
* :mod:`~imgcap.sweep.reporter`: the Lightning callback that reports and prunes;
* :mod:`~imgcap.sweep.study_runner`: ask/tell, counting, heartbeats, retries;
* :mod:`~imgcap.sweep.workers`: worker processes, GPUs round-robin;
* :mod:`~imgcap.sweep.results`: ``optimization_results.yaml``, ``trials.csv``, plots;
* :mod:`~imgcap.sweep.sweeper`: the Hydra sweeper tying them together;
* ``python -m imgcap.sweep status <storage>``: a study's state while it runs.

Nothing heavy is imported here: the job side is loaded by every training run.
"""
