"""``agrifm fit|validate|test --config CONFIG.yaml [--section.key value ...]``.

A ``LightningCLI`` over the AgriFM tasks (``model:``, any :class:`AgriFMTask` subclass by
``class_path``) and datamodules (``data:``, any :class:`AgriFMDataModule`), plus ``trainer:``,
``checkpoint:`` (best by ``val_mf1``) and ``last_checkpoint:`` (``last.ckpt`` every n steps).
YAML is parsed, never executed. Everything of a run lives in ``trainer.default_root_dir``::

    checkpoints/best.ckpt, checkpoints/last.ckpt   resume with --ckpt_path last
    logs/version_N/metrics.csv, config.yaml        CSV logger, the resolved config
    model.safetensors                              exported at the end of fit (our format)
    test/ (validate/)                              metrics.json, report.md, PNG figures

The datamodule's sources (bands + normalisation statistics, possibly computed on the training
split) and frame count are linked into the task, so they travel into the exported model.
"""

from __future__ import annotations

import re
import sys
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

# The task modules are imported so that short class_path names (SegmentationTask, ...) resolve.
from agrifm.errors import InputError, OutputExistsError, user_input
from agrifm.tasks import boundary, classification, segmentation  # noqa: F401
from agrifm.tasks.base import AgriFMTask
from agrifm.tasks.callbacks import AtomicCheckpointIO, RunCheckpoint, checkpoint_dir, find_run_checkpoint
from agrifm.tasks.datamodules import AgriFMDataModule

__all__ = ["AgriFMCLI", "main", "default_trainer_settings", "EXPORT_NAME"]

EXPORT_NAME = "model.safetensors"
_HEADLINE = ("oa", "mf1", "miou", "kappa")


def default_trainer_settings() -> dict[str, Any]:
    """bf16 mixed precision on GPUs that have it (the published recipe's speed), else fp32
    (:func:`agrifm.runtime.trainer_precision`)."""
    from agrifm.runtime import trainer_precision

    precision = trainer_precision("auto")
    from agrifm.progress import lightning_progress  # a bar on a terminal, a line per epoch in a log file

    bar, lines = lightning_progress(True, "fit")
    return {"precision": precision, "default_root_dir": "runs/agrifm", "log_every_n_steps": 10,
            "enable_progress_bar": bar, **({"callbacks": lines} if lines else {})}


def load_weights(task: AgriFMTask, path: Path) -> None:
    """Weights of a Lightning checkpoint into ``task`` (no unpickling of arbitrary objects)."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    task.load_state_dict(state)


_EPILOG = """\
Start from an example config in the configs/ folder of the agrifm sources (e.g.
configs/pastis_s2.yaml, configs/sinop_points.yaml) and override single settings on the
command line, e.g. --trainer.max_epochs 5. Options of the model and the data are listed by
--model.help CLASS and --data.help CLASS.

Everything of a run lives in trainer.default_root_dir (default runs/agrifm):
  checkpoints/best.ckpt, checkpoints/last.ckpt   resume with --ckpt_path last
  logs/version_N/metrics.csv, config.yaml        training log, the resolved config
  model.safetensors                              written at the end of fit (for agrifm predict)
  test/ or validate/                             metrics.json, report.md and PNG figures
fit refuses a run folder that holds a finished or started run unless --overwrite (start
afresh, replacing it) or --ckpt_path last (continue it) is given.
"""
_DESCRIPTIONS = {
    "fit": "Fine-tune a model: train, keep the best and last checkpoints, export model.safetensors.",
    "validate": "Evaluate a model on the validation split; writes RUN/validate/ (metrics.json, report.md, figures).",
    "test": "Evaluate a model on the test split; writes RUN/test/ (metrics.json, report.md, figures).",
}


def plain_text(text: str) -> str:
    """Help text without reStructuredText markup: ``x`` -> x, :class:`a.B` -> B."""
    text = re.sub(r":(?:class|func|meth|attr|mod|obj|paramref|ref):`~?(?:[\w.]*\.)?([^`<]+?)(?: <[^>]+>)?`", r"\1", text)
    text = re.sub(r"``([^`]*)``", r"\1", text)
    return re.sub(r"`([^`]*)`_?", r"\1", text)


class HelpParser(LightningArgumentParser):
    """``usage: agrifm fit ...``; help without reStructuredText markup."""

    def format_usage(self) -> str:
        return plain_text(super().format_usage()).replace("agrifm [options] ", "agrifm ")

    def format_help(self) -> str:
        epilog, self.epilog = self.epilog, None  # printed as written (a table), not re-flowed
        try:
            text = plain_text(super().format_help()).replace("agrifm [options] ", "agrifm ")
        finally:
            self.epilog = epilog
        return f"{text}\n{epilog}" if epilog else text


class AgriFMCLI(LightningCLI):
    """LightningCLI with AgriFM defaults; ``args`` as for LightningCLI (a list of CLI tokens)."""

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", default_trainer_settings())
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("parser_class", HelpParser)
        kwargs.setdefault("parser_kwargs", {
            "prog": "agrifm", **{k: {"description": d, "epilog": _EPILOG, "prog": f"agrifm {k}"}
                                 for k, d in _DESCRIPTIONS.items()}})
        super().__init__(AgriFMTask, AgriFMDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False, args=args,
                         **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate", "test")}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--overwrite", action="store_true",
                            help="fit: start afresh in a run folder that holds a run, replacing it; "
                                 "validate/test: replace the run's earlier report (RUN/validate/, RUN/test/)")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val_mf1", "checkpoint.mode": "max", "checkpoint.filename": "best",
                             "checkpoint.save_top_k": 1, "checkpoint.auto_insert_metric_name": False,
                             "checkpoint.enable_version_counter": False})
        parser.add_lightning_class_args(RunCheckpoint, "last_checkpoint")
        parser.set_defaults({"last_checkpoint.save_top_k": 0, "last_checkpoint.save_last": True,
                             "last_checkpoint.every_n_train_steps": 100,
                             "last_checkpoint.enable_version_counter": False})
        # The data decide bands, statistics and frames; the task stores them for export.
        parser.link_arguments("data.source_meta", "model.init_args.sources", apply_on="instantiate")
        parser.link_arguments("data.frames", "model.init_args.frames", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Keep the YAML as the one source of truth: given a checkpoint file, Lightning would
        merge its hyper-parameters into the config (clashing with the data -> model links), so
        ``ckpt_path`` is held back until the config is complete (:meth:`before_instantiate_classes`)
        and a checkpoint only supplies weights and training state."""
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        self._ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if sub:
            self.config[sub]["ckpt_path"] = None

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        if sub:
            self.config[sub]["ckpt_path"] = self._ckpt_path

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """CSV logs inside the run directory unless a logger is configured; checkpoints written
        atomically (:class:`AtomicCheckpointIO`) unless a checkpoint plugin is configured."""
        cfg = self.config_init.get(str(self.subcommand), self.config_init).get("trainer", {})
        if cfg.get("logger") in (None, True):
            kwargs.setdefault("logger", CSVLogger(cfg.get("default_root_dir") or ".", name="logs"))
        plugins = cfg.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        return super().instantiate_trainer(**kwargs)

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.trainer.default_root_dir)

    def _resolve_ckpt(self, fallback: Sequence[str]) -> None:
        """``best``/``last`` -> this run's file; none given -> the first of ``fallback`` found."""
        sub = self.config_init[self.subcommand]
        given = sub.get("ckpt_path")
        if not given and self.subcommand == "fit":
            self._refuse_replacing_a_run(bool(sub.get("overwrite")))
        for which in ([given] if given else fallback):
            path = find_run_checkpoint(self.trainer, which)
            if path is not None and not zipfile.is_zipfile(path):  # what torch.save writes
                raise InputError(f"--ckpt_path {path} is not a Lightning checkpoint (.ckpt)")
            if path is not None:
                sub["ckpt_path"] = str(path)
                rank_zero_info(f"checkpoint: {path}")
                return
        folder = checkpoint_dir(self.trainer)
        if given == "last" and self.subcommand == "fit":
            rank_zero_info(f"no last.ckpt in {folder}: training from the start")
        elif given:
            raise FileNotFoundError(f"no {given}.ckpt in {folder}")
        elif fallback:
            rank_zero_warn(f"no checkpoint in {folder}: evaluating the model as configured (init_checkpoint or random)")
        sub["ckpt_path"] = None

    def _refuse_replacing_a_run(self, overwrite: bool) -> None:
        """A fresh fit into a folder holding a run's model or checkpoints needs ``--overwrite``."""
        held = [p for p in (self.run_dir / EXPORT_NAME, find_run_checkpoint(self.trainer, "last"),
                            find_run_checkpoint(self.trainer, "best")) if p is not None and Path(p).exists()]
        if not held:
            return
        if not overwrite:
            raise OutputExistsError(f"run folder {self.run_dir} holds a run ({held[0]}): pass --ckpt_path last to "
                                    "continue it, --overwrite to start afresh and replace it, or another "
                                    "--trainer.default_root_dir")
        rank_zero_warn(f"--overwrite: this run starts afresh; removed {', '.join(map(str, held))}")
        for path in held:  # a stale best.ckpt would otherwise be what 'test' evaluates later
            Path(path).unlink(missing_ok=True)

    def _check_class_names(self) -> None:
        """Data that name their classes (points, tables) must agree with the model's class order."""
        names = getattr(self.datamodule, "class_names", None)
        task: AgriFMTask = self.model
        if names and task.hparams.task_name != "boundary" and list(names) != list(task.class_names):
            raise InputError(f"the data's classes {list(names)} differ from the model's class_names "
                             f"{task.class_names}; give the list once (a YAML anchor: &classes / *classes)")

    def before_fit(self) -> None:
        self._check_class_names()
        self._resolve_ckpt(())

    def _refuse_replacing_a_report(self) -> None:
        """``validate``/``test`` write ``RUN/<stage>/``; an earlier report there needs ``--overwrite``."""
        stage = str(self.subcommand)
        earlier = self.run_dir / stage / "metrics.json"
        if earlier.exists() and not self.config_init[stage].get("overwrite"):
            raise OutputExistsError(f"run folder {self.run_dir} holds a {stage} report ({earlier}): pass --overwrite "
                                    "to replace it, or another --trainer.default_root_dir")

    def before_validate(self) -> None:
        self._check_class_names()
        self._refuse_replacing_a_report()
        self._resolve_ckpt(("best", "last"))

    def before_test(self) -> None:
        self._check_class_names()
        self._refuse_replacing_a_report()
        self._resolve_ckpt(("best", "last"))

    # -- outputs --------------------------------------------------------------------------------
    def after_fit(self) -> None:
        """Export the best checkpoint (else the final weights) as ``model.safetensors``."""
        best = next((cb.best_model_path for cb in self.trainer.checkpoint_callbacks
                     if getattr(cb, "monitor", None) and cb.best_model_path), "")
        extra: dict[str, Any] = {"global_step": self.trainer.global_step, "weights": "final"}
        if best and Path(best).is_file():
            load_weights(self.model, Path(best))
            extra["weights"] = Path(best).name
        if self.trainer.is_global_zero:
            path = self.model.export(str(self.run_dir / EXPORT_NAME), extra=extra)
            rank_zero_info(f"exported {path} ({extra['weights']} weights)")

    def after_validate(self) -> None:
        self._report("validate", self.model.last_val)

    def after_test(self) -> None:
        self._report("test", self.model.last_test)

    def _report(self, stage: str, metrics: dict[str, Any]) -> None:
        """JSON + Markdown + figures in ``<run>/<stage>/``."""
        from agrifm.tasks.report import write_report

        if not metrics:
            rank_zero_warn(f"{stage}: no labelled pixel was evaluated; no report written")
            return
        if not self.trainer.is_global_zero:
            return
        task = self.model
        scores = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float) and k not in _HEADLINE}
        extra = {"task": type(task).__name__, "checkpoint": str(self.config_init[self.subcommand].get("ckpt_path")),
                 "sources": ", ".join(task.sources_meta), "data": type(self.datamodule).__name__, **scores}
        paths = write_report(metrics, self.run_dir / stage, title=f"AgriFM {stage}: {self.run_dir.name}",
                             class_names=task.class_names, extra=extra)
        from agrifm.tasks.plots import training_curves_from_run  # loss + validation metrics of the fit, if any

        training_curves_from_run(self.run_dir, self.run_dir / stage / "training_curves.png", title=f"AgriFM fit: {self.run_dir.name}")
        rank_zero_info(f"{stage} report: {paths['report.md']}")


def main(argv: Sequence[str] | None = None) -> int:
    """``argv`` = ``[fit|validate|test, options...]`` (``agrifm.cli`` passes the command first)."""
    with user_input():  # the data's checks raise ValueError/KeyError: the dispatcher prints one line
        if argv is None or list(argv) == sys.argv[1:]:
            AgriFMCLI()  # LightningCLI reads sys.argv itself
            return 0
        with warnings.catch_warnings():  # called from Python on purpose (tests, notebooks): not a mistake
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            AgriFMCLI(args=list(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
