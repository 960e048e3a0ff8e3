"""Weights & Biases (`--report-to wandb`, extra `onestep-bench[wandb]`): one W&B run per benchmark run, in project
`onestep-bench` (else `$WANDB_PROJECT`), grouped by `<method>/<variant>`, tagged with method, variant, concept,
`seed<k>` and profile, the resolved config and hashes as its config; scalars at the run's global step, sample grids
as images, the final scores in its summary. Offline (`WANDB_MODE=offline`) it writes under `$WANDB_DIR`, else
`<results>/wandb`, for `wandb sync` later. Its own login and settings (`WANDB_API_KEY`, `WANDB_ENTITY`) apply.
"""

from __future__ import annotations

import os
from typing import Any

from bench.tracking import PROJECT, RunInfo


def has_credentials() -> bool:
    """Whether W&B online can log in without asking: `WANDB_API_KEY`, an identity token file, or a key for its host
    in the netrc file (`wandb login` writes it; `$NETRC` if set, else ~/.netrc)."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    def start(self, run: RunInfo) -> None:
        import wandb

        if os.environ.get("WANDB_MODE", "online") in ("online", "run", "") and not has_credentials():
            # its client would otherwise stop the run to ask for a key on the terminal
            raise RuntimeError("not logged in to W&B: run `wandb login`, set WANDB_API_KEY, or WANDB_MODE=offline")

        folder = os.environ.get("WANDB_DIR") or str(run.results / "wandb")
        os.makedirs(folder, exist_ok=True)
        tags = [run.method, run.variant, run.concept, f"seed{run.seed}", run.profile]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT, group=run.group, name=run.name,
                              job_type=run.profile, tags=[t[:64] for t in dict.fromkeys(tags)],
                              config=run.tracked_config(), dir=folder, reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def image(self, tag: str, image: Any, step: int, caption: str = "") -> None:
        import wandb

        self.run.log({tag: wandb.Image(image, caption=caption or None)}, step=step)

    def finish(self, status: str, metrics: dict[str, float]) -> None:
        self.run.summary.update({"status": status, **{f"metrics/{k}": v for k, v in metrics.items()}})
        self.run.finish(exit_code=0 if status == "done" else 1)
