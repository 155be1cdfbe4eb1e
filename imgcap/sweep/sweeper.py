"""The Hydra sweeper (``hydra/sweeper=imgcap_optuna``, chosen by ``hparams_search=optuna``).

``hydra_plugins/imgcap_sweeper`` only declares the plugin to Hydra; the work is here:

1. the search space from ``hydra.sweeper.params`` and the command line's sweeps;
2. the study, loaded or created in its storage (a journal file by default), named after the
   experiment and the search space unless ``hydra.sweeper.study_name`` is given;
3. trials run by worker processes on this machine (``n_jobs``, GPUs round-robin), or in
   batches of ``n_jobs`` through a Hydra launcher such as SLURM's;
4. the results files and plots in the sweep directory.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from imgcap.errors import ConfigError, Interrupted
from imgcap.run import study_storage as storage_mod
from imgcap.run.trial_link import ENV_STORAGE, ENV_STUDY, ENV_TRIAL, STUDY_ATTR_PRUNER
from imgcap.sweep.space import default_study_name, format_value, parse_search_space

log = logging.getLogger(__name__)

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
DIRECTIONS = ("maximize", "minimize")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


class SweepSettings:
    """``hydra.sweeper.*`` as plain Python values, checked."""

    def __init__(self, **settings: Any) -> None:
        s = {k: _plain(v) for k, v in settings.items()}
        self.direction = str(s.get("direction") or "maximize").lower()
        if self.direction not in DIRECTIONS:
            raise ConfigError(
                f"hydra.sweeper.direction={self.direction} is not maximize or minimize "
                "(it follows monitor_mode: max or min)"
            )
        self.study_name: str | None = s.get("study_name") or None
        self.storage: str | None = s.get("storage") or None
        self.n_trials = int(s.get("n_trials") or 0)
        if self.n_trials < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={s.get('n_trials')} must be at least 1")
        self.n_jobs = max(1, int(s.get("n_jobs") or 1))
        self.trials_per_gpu = max(1, int(s.get("trials_per_gpu") or 1))
        self.timeout = float(s["timeout"]) if s.get("timeout") not in (None, "") else None
        self.sampler = s.get("sampler")
        self.pruner = s.get("pruner")
        self.pruner_settings = s.get("pruner_settings") or {}
        self.params = s.get("params") or {}
        self.heartbeat_interval = float(s.get("heartbeat_interval") or 30)
        self.stale_after = float(s.get("stale_after") or 6 * self.heartbeat_interval)
        self.plots = bool(s.get("plots", True))


def build_sampler(spec: Any) -> Any:
    """``hydra.sweeper.sampler`` (a ``_target_`` node, e.g. TPESampler with a seed)."""
    if spec is None:
        return None
    if not isinstance(spec, dict) and not OmegaConf.is_config(spec):
        return spec  # Hydra built it already when it instantiated the sweeper
    from hydra.utils import instantiate

    try:
        return instantiate(spec)
    except Exception as err:  # noqa: BLE001 - a wrong class or argument: one line
        raise ConfigError(f"hydra.sweeper.sampler cannot be built: {err}") from None


def open_study(
    study_name: str, storage_url: str, direction: str, sampler: Any, pruner_spec: dict
) -> Any:
    """Load the study or create it; refuse one created with the other direction."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweeper logs each trial itself
    storage = storage_mod.open_storage(storage_url)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=sampler,
        direction=direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"study {study_name} in {storage_url} was created to {study.direction.name.lower()}; "
            f"direction={direction} needs another hydra.sweeper.study_name"
        )
    study.set_user_attr(STUDY_ATTR_PRUNER, pruner_spec)
    return study


class HydraSweep:
    """One ``python train.py -m hparams_search=optuna ...``: everything the plugin does."""

    def __init__(
        self, settings: SweepSettings, hydra_context: Any, task_function: Any, config: DictConfig
    ) -> None:
        self.settings = settings
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config
        self.launcher: Any = None

    # ------------------------------------------------------------------ setup
    def _launcher_target(self) -> str:
        return str(self.config.hydra.launcher.get("_target_", BASIC_LAUNCHER))

    def uses_own_workers(self) -> bool:
        return self._launcher_target() == BASIC_LAUNCHER

    def _hydra_launcher(self) -> Any:
        from hydra.core.plugins import Plugins

        if self.launcher is None:
            self.launcher = Plugins.instance().instantiate_launcher(
                hydra_context=self.hydra_context,
                task_function=self.task_function,
                config=self.config,
            )
        return self.launcher

    # ------------------------------------------------------------------ the sweep
    def sweep(self, arguments: list[str]) -> list[dict[str, Any]]:
        from imgcap.run.pruners import build_pruner, pruner_spec
        from imgcap.sweep.study_runner import StudyRunner, SweepInterrupted, TrialJob
        from imgcap.sweep.workers import plan_slots

        s = self.settings
        space = parse_search_space(s.params, arguments)
        if not space.distributions:
            raise ConfigError(
                "hparams_search=optuna has nothing to search: give hydra.sweeper.params or a "
                "command-line sweep such as model.optimizer.lr='interval(1e-4,1e-3)'"
            )
        choices = self.config.hydra.runtime.choices
        objective = str(self.config.get("optimized_metric") or "")
        study_name = s.study_name or default_study_name(
            choices.get("experiment"), space, arguments, objective
        )
        storage_url = s.storage or storage_mod.default_storage(
            self.config.paths.log_dir, self.config.task_name, study_name
        )
        if storage_mod.is_journal(storage_url):
            storage_url = str(storage_mod.journal_path(storage_url).resolve())
        spec = pruner_spec(s.pruner, s.pruner_settings)
        build_pruner(spec["name"], spec["settings"])  # a wrong setting: one line, now
        study = open_study(study_name, storage_url, s.direction, build_sampler(s.sampler), spec)
        continued = len(study.get_trials(deepcopy=False))
        if continued:
            study.sampler = self._continuing_sampler(study.sampler, continued)
        study.set_user_attr("imgcap.objective", objective)
        study.set_user_attr("imgcap.search_space", space.describe())

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info(
            "study %s (%s, pruner=%s): %d trials in %s; see it with `python -m imgcap.sweep "
            "status %s`",
            study_name,
            s.direction,
            spec["name"],
            s.n_trials,
            storage_url,
            storage_url,
        )
        env = {ENV_STORAGE: storage_url, ENV_STUDY: study_name}

        def make_job(trial: Any) -> TrialJob:
            params = dict(trial.params)
            overrides = space.overrides(params)
            resume_from = trial.user_attrs.get("resume_from")
            if resume_from:
                overrides.append(f"ckpt_path={format_value(resume_from)}")
            job_env = {**env, ENV_TRIAL: str(trial.number)}
            hydra_overrides = [
                f"++hydra.job.env_set.{k}={format_value(v)}" for k, v in job_env.items()
            ]
            job = TrialJob(trial.number, params, overrides, job_env, resume_from=resume_from)
            job.payload = [*overrides, *hydra_overrides]
            if self.uses_own_workers():
                config = self.hydra_context.config_loader.load_sweep_config(
                    self.config, job.payload
                )
                with open_dict(config):
                    config.hydra.job.id = f"{study_name}_{trial.number}"
                    config.hydra.job.num = trial.number
                job.payload = config
            # A retry that resumes continues in its own run's directory.
            job.run_dir = trial.user_attrs.get("run_dir") if resume_from else None
            if job.run_dir is None and self.uses_own_workers():
                job.run_dir = str(
                    Path(str(job.payload.hydra.sweep.dir)) / str(job.payload.hydra.sweep.subdir)
                )
            return job

        def results() -> None:
            from imgcap.sweep.results import write_results

            write_results(study, sweep_dir, storage_url)

        runner = StudyRunner(
            study,
            space,
            s.n_trials,
            make_job,
            timeout=s.timeout,
            heartbeat_interval=s.heartbeat_interval,
            stale_after=s.stale_after,
            on_trial_done=results,
        )
        try:
            if self.uses_own_workers():
                slots = plan_slots(s.n_jobs, s.trials_per_gpu)
                runner.run(slots, self._run_in_worker)
            else:
                runner.run_batches(s.n_jobs, self._launch_batch)
        except SweepInterrupted as stop:
            results()
            code = 128 + stop.signum
            message = (
                f"sweep interrupted by {signal.Signals(stop.signum).name}: study {study_name} is "
                f"saved in {storage_url}; run the same command again to continue it"
            )
            print(message, file=sys.stderr)
            raise Interrupted(message, code) from None
        summary = self.finish(study, sweep_dir, storage_url)
        return [summary]

    def finish(self, study: Any, sweep_dir: Path, storage_url: str) -> dict[str, Any]:
        from imgcap.sweep.results import write_plots, write_results

        summary = write_results(study, sweep_dir, storage_url)
        if self.settings.plots:
            write_plots(study, sweep_dir)
        counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items())
        if summary.get("best_value") is not None:
            log.info(
                "best trial %d: %s = %s (%s); %s; results in %s",
                summary["best_trial"],
                study.user_attrs.get("imgcap.objective") or "value",
                summary["best_value"],
                summary["best_params"],
                counts,
                sweep_dir,
            )
        else:
            log.info("no trial completed (%s); results in %s", counts, sweep_dir)
        return summary

    def _continuing_sampler(self, sampler: Any, offset: int) -> Any:
        """A rerun continues the study with the sampler seeded ``seed + trials so far``: with
        the same seed it would draw its first (random start-up) points again."""
        node = OmegaConf.select(self.config, "hydra.sweeper.sampler")
        spec = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else None
        if not isinstance(spec, dict) or spec.get("seed") is None:
            return sampler
        spec["seed"] = int(spec["seed"]) + offset
        log.info("continuing the study: sampler seed %d", spec["seed"])
        return build_sampler(spec)

    # ------------------------------------------------------------------ running jobs
    def _run_in_worker(self, job: Any) -> Any:
        """In a forked worker: run the task on the job's composed config."""
        from hydra.core.utils import JobStatus, run_job

        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=job.payload,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        if ret.status == JobStatus.FAILED:
            raise ret._return_value
        return ret.return_value

    def _launch_batch(self, jobs: list[Any]) -> list[Any]:
        """Through the configured Hydra launcher: one batch, all of it awaited."""
        from hydra.core.utils import JobStatus

        from imgcap.sweep.workers import FAILED, OK, Outcome

        launcher = self._hydra_launcher()
        try:
            returns = launcher.launch([job.payload for job in jobs], jobs[0].number)
        except Exception as err:  # noqa: BLE001 - the launcher failed the whole batch
            text = str(err).strip().splitlines()
            return [Outcome(FAILED, f"launcher: {text[-1] if text else err!r}") for _ in jobs]
        outcomes = []
        for ret in returns:
            if ret.status == JobStatus.COMPLETED:
                outcomes.append(Outcome(OK, ret.return_value))
            else:
                error = ret._return_value
                outcomes.append(Outcome(FAILED, f"{type(error).__name__}: {error}"))
        return outcomes


def run_sweep(
    settings: dict[str, Any],
    hydra_context: Any,
    task_function: Any,
    config: Any,
    arguments: list[str],
) -> list[dict[str, Any]]:
    """Entry point of the plugin class."""
    os.environ.setdefault("WANDB_SILENT", "true")
    sweep = HydraSweep(SweepSettings(**settings), hydra_context, task_function, config)
    return sweep.sweep(arguments)
