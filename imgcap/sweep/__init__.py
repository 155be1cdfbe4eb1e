"""The sweep engine behind ``python train.py -m hparams_search=optuna``.

* :mod:`~imgcap.sweep.space`: Hydra's sweep syntax -> Optuna distributions -> overrides;
* :mod:`~imgcap.sweep.study_runner`: ask/tell, counting, heartbeats, retries;
* :mod:`~imgcap.sweep.workers`: worker processes, GPUs round-robin;
* :mod:`~imgcap.sweep.results`: ``optimization_results.yaml``, ``trials.csv``, plots;
* :mod:`~imgcap.sweep.sweeper`: the Hydra sweeper tying them together;
* ``python -m imgcap.sweep status <storage>``: a study's state while it runs.

What a training job needs of its study lives in the run layer, which never imports this
package: :mod:`~imgcap.run.study_storage` (where a study lives, a journal file by default),
:mod:`~imgcap.run.pruners` (the pruner choice), :mod:`~imgcap.run.trial_link` (the job's trial,
from the environment) and :mod:`~imgcap.run.trial_reporter` (the Lightning callback that
reports and prunes).

Nothing heavy is imported here.
"""
