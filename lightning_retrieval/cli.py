"""``lightning-retrieval``: LightningCLI (fit / validate / test / predict) plus ``registry`` and ``report``.

Registry short names work anywhere a ``class_path`` is accepted, because the registry hooks into
jsonargparse's own class-name resolution (see ``registry/jsonargparse_hooks.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningCLI

from lightning_retrieval.data.datamodule import RetrievalDataModule
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
"""


class RetrievalCLI(LightningCLI):
    """LightningCLI whose model is any registered task and whose data is :class:`RetrievalDataModule`."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.feature_spec", "model.init_args.feature_spec", apply_on="instantiate")

    def _configure_tracking(self) -> None:
        """W&B runs get a name, group and tags from the chosen components, and the full resolved config."""
        from lightning_retrieval.tracking.wandb_setup import configure_wandb_loggers

        sub_config = self.config[self.subcommand]
        dumped = yaml.safe_load(self._parser(self.subcommand).dump(sub_config, skip_none=False))
        configs = sub_config.get("config") or []
        experiment = Path(str(configs[0])).stem if configs else self.subcommand
        configure_wandb_loggers(self.trainer, dumped, experiment)

    def before_fit(self) -> None:
        self._configure_tracking()

    def before_validate(self) -> None:
        self._configure_tracking()

    def before_test(self) -> None:
        self._configure_tracking()

    def before_predict(self) -> None:
        self._configure_tracking()


def prepare_registry() -> None:
    """Import built-in components and plugins, and hook short names into jsonargparse."""
    install()
    _ensure_builtins()
    load_plugins()


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
    argv = list(sys.argv[1:] if args is None else args)
    prepare_registry()
    if argv and argv[0] == "registry":
        print_registry(argv[1] if len(argv) > 1 else None)
        return
    if argv and argv[0] == "compare":
        from lightning_retrieval.compare import main as compare

        compare(argv[1:])
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
        args=argv,
        parser_kwargs={"description": "lightning-retrieval: embedding-based retrieval on PyTorch Lightning"},
    )


if __name__ == "__main__":
    main()
