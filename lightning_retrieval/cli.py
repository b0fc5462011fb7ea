"""``lightning-retrieval``: LightningCLI (fit / validate / test / predict) plus ``registry`` and ``report``.

Registry short names work anywhere a ``class_path`` is accepted, because the registry hooks into
jsonargparse's own class-name resolution (see ``registry/jsonargparse_hooks.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_retrieval.checkpoints import (
    RunRecord,
    check_checkpoint_matches,
    restore_logger_versions,
    safe_torch_load,
)
from lightning_retrieval.configs import fill_run_paths
from lightning_retrieval.data.datamodule import RetrievalDataModule
from lightning_retrieval.errors import LightningRetrievalError
from lightning_retrieval.registry import components, kinds
from lightning_retrieval.registry.core import _ensure_builtins
from lightning_retrieval.registry.jsonargparse_hooks import install
from lightning_retrieval.registry.plugins import load_plugins
from lightning_retrieval.tasks.base import RetrievalModel

USAGE_EXTRA = """
extra subcommands:
  registry [KIND]       list registered components (all kinds, or one) with their parameters
  report RUN_DIR ...    print a Markdown table of the result cards under the given run directories
  compare CONFIG ...    fit + test each config, then write one comparison table (--output FILE.md)
  export --config C --ckpt_path CKPT --output DIR   write a retriever folder (index, user side, manifest)
  recommend DIR --user-history 1,2,3 [--k 10] [--topic T]   top-k from a retriever folder

global flags (before or after the subcommand):
  --plugins DIR         import the plugin modules DIR/*.py (repeatable; also $LIGHTNING_RETRIEVAL_PLUGIN_PATH);
                        ./plugins is never imported unless named
  --debug               full tracebacks for the package's own errors (also LIGHTNING_RETRIEVAL_DEBUG=1)
"""
DEBUG_ENV = "LIGHTNING_RETRIEVAL_DEBUG"
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what shells report for a process ended by SIGTERM
_CKPT_KEYWORDS = ("best", "last", "hpc", "registry")


class RetrievalCLI(LightningCLI):
    """LightningCLI whose model is any registered task and whose data is :class:`RetrievalDataModule`."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.feature_spec", "model.init_args.feature_spec", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """In the parsed config, before anything is built: the run directory (runs/<first config's stem> unless
        set; loggers and checkpoints write into it) and the W&B runs' name, group and tags (logger init args)."""
        self._experiment, self._resolved_config = None, None
        if not self.config.get("subcommand"):
            return
        sub_config = self.config[self.config.subcommand]
        configs = sub_config.get("config") or []
        fill_run_paths(sub_config, configs)
        if "WandbLogger" in str(sub_config.trainer.get("logger")):
            from lightning_retrieval.tracking.wandb_setup import name_wandb_loggers

            self._experiment = Path(str(configs[0])).stem if configs else self.config.subcommand
            dumped = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            self._resolved_config = dumped[self.config.subcommand]
            name_wandb_loggers(sub_config.trainer, self._resolved_config, self._experiment)

    def _parse_ckpt_path(self) -> None:
        """The config (and command line) wins over the checkpoint's saved hyper-parameters: LightningCLI would
        replace the model's config by them. The checkpoint is read (safely) here and checked against the built
        model in ``_check_checkpoint``."""
        self._checkpoint, self._checkpoint_path = None, None
        if not self.config.get("subcommand"):
            return
        path = self.config[self.config.subcommand].get("ckpt_path")
        if not path or (str(path) in _CKPT_KEYWORDS and not Path(path).is_file()):
            return
        self._checkpoint, self._checkpoint_path = safe_torch_load(path), path

    def _check_checkpoint(self) -> None:
        """Refuse a checkpoint of another model; continue the checkpoint's log folders when resuming ``fit``."""
        if self._checkpoint is None:
            return
        self._dump_config()
        kept = check_checkpoint_matches(
            self._checkpoint, self.model, self.config_dump.get("model") or {}, self._checkpoint_path
        )
        if kept:
            print(f"config overrides the checkpoint's {', '.join(kept)}", file=sys.stderr)
        if self.subcommand == "fit":
            restore_logger_versions(self.trainer, self._checkpoint)
        self._checkpoint = None  # the trainer loads the weights itself

    def fit(self, model, **kwargs) -> None:
        """``trainer.fit``; a run stopped by SIGTERM (schedulers, ``kill``) exits non-zero saying where it stopped."""
        self._dump_config()
        self.trainer.callbacks.append(RunRecord(self.config_dump.get("model")))
        try:
            self.trainer.fit(model, **kwargs)
        except SIGTERMException:
            pass
        if self.trainer.received_sigterm:
            last = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none saved"
            print(
                f"fit stopped by SIGTERM in epoch {self.trainer.current_epoch} (global step "
                f"{self.trainer.global_step}) of max_epochs {self.trainer.max_epochs}; last checkpoint: {last}",
                file=sys.stderr,
            )
            raise SystemExit(SIGTERM_EXIT_CODE)

    def _configure_tracking(self) -> None:
        """W&B runs (named in ``before_instantiate_classes``) get the full resolved config."""
        if getattr(self, "_resolved_config", None) is not None:
            from lightning_retrieval.tracking.wandb_setup import log_config_to_wandb

            log_config_to_wandb(self.trainer, self._resolved_config, self._experiment)

    def before_fit(self) -> None:
        self._check_checkpoint()
        self._configure_tracking()

    def before_validate(self) -> None:
        self._check_checkpoint()
        self._configure_tracking()

    def before_test(self) -> None:
        self._check_checkpoint()
        self._configure_tracking()

    def before_predict(self) -> None:
        self._check_checkpoint()
        self._configure_tracking()


def prepare_registry(plugin_dirs: list[str] | None = None) -> None:
    """Import built-in components and plugins (entry points, named plugin folders), hook short names into
    jsonargparse."""
    install()
    _ensure_builtins()
    load_plugins(plugin_dirs)


# Subcommands that run the CLI themselves (``compare`` fits configs through :func:`main`): named like entry points,
# ``module:function``, and imported only when called, so that this module does not import them back (no circle).
COMMANDS = {
    "compare": "lightning_retrieval.compare:main",
    "export": "lightning_retrieval.serving.cli:export_main",
    "recommend": "lightning_retrieval.serving.cli:recommend_main",
}


def command(name: str):
    """The function behind subcommand ``name`` (see ``COMMANDS``)."""
    import importlib

    module, _, function = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def split_global_flags(argv: list[str]) -> tuple[list[str], list[str], bool]:
    """``(argv without them, --plugins DIRs, --debug)``: flags of this program, not of the Lightning parser."""
    rest, plugin_dirs, debug = [], [], False
    items = iter(argv)
    for arg in items:
        if arg == "--debug":
            debug = True
        elif arg == "--plugins":
            value = next(items, None)
            if value is None:
                raise SystemExit("--plugins needs a directory")
            plugin_dirs.append(value)
        elif arg.startswith("--plugins="):
            plugin_dirs.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return rest, plugin_dirs, debug


def print_registry(kind: str | None = None, out=sys.stdout) -> None:
    selected = [kind] if kind else list(kinds())
    for k in selected:
        base = kinds()[k] if k in kinds() else None
        if base is None:
            raise SystemExit(f"unknown registry {k!r}; registries: {', '.join(kinds())}")
        print(f"\n[{k}]  base class: {base.__module__}.{base.__qualname__}", file=out)
        for info in components(k):
            print(f"  {info.name:<24} {info.import_path}", file=out)
            if info.summary:
                print(f"  {'':<24} {info.summary}", file=out)
            params = info.parameters()
            if params:
                print(f"  {'':<24} params: {', '.join(params)}", file=out)


def main(args: list[str] | None = None) -> None:
    """The ``lightning-retrieval`` command. The package's own errors (:mod:`lightning_retrieval.errors`) are
    printed as one message, without the traceback unless ``--debug`` or ``LIGHTNING_RETRIEVAL_DEBUG=1``."""
    argv, plugin_dirs, debug = split_global_flags(list(sys.argv[1:] if args is None else args))
    debug = debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        _main(argv, plugin_dirs, from_console=args is None)
    except LightningRetrievalError as err:
        if debug:
            raise
        print(
            f"error ({type(err).__name__}): {err}\n(set {DEBUG_ENV}=1 or pass --debug for the traceback)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


def _main(argv: list[str], plugin_dirs: list[str], from_console: bool = False) -> None:
    prepare_registry(plugin_dirs)
    if argv and argv[0] == "registry":
        print_registry(argv[1] if len(argv) > 1 else None)
        return
    if argv and argv[0] in COMMANDS:
        command(argv[0])(argv[1:])
        return
    if argv and argv[0] == "report":
        from lightning_retrieval.reporting import print_report

        print_report(argv[1:])
        return
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE_EXTRA)
    RetrievalCLI(
        RetrievalModel,
        RetrievalDataModule,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        # from the console LightningCLI reads sys.argv itself (this program's own flags consumed); a caller's list
        # is passed as ``args``
        args=_console_args(argv) if from_console else argv,
        parser_kwargs={"description": "lightning-retrieval: embedding-based retrieval on PyTorch Lightning"},
    )


def _console_args(argv: list[str]) -> None:
    """None, after leaving only ``argv`` (the arguments for LightningCLI) in ``sys.argv``."""
    sys.argv[1:] = argv
    return None


if __name__ == "__main__":
    main()
