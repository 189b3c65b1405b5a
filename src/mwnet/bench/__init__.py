"""The speed benchmark behind `mwnet bench speed`: step time and peak memory of plain CE, the official algorithm,
every mwnet mode and the peer libraries' steps, as ratios to CE, and where the time of a step goes.

Only the command line imports this package (lazily, when the command runs); the library never does.

- runners: the per-method step closures (`MetaReweighter.step`, `mwnet.reference.official_step`, plain CE).
- peers: the optional rows of other libraries (higher, torchopt, Betty), imported only when built.
- timing: interleaved wall-clock timing and peak memory.
- profile: the phase table, read from the `record_function` marks inside the real steps.
- report: the records and their Markdown; the methodology prose is speed_template.md.
- speed: `run_speed_benchmark`, which puts them together.
"""

from mwnet.bench.config import DEFAULT_MODELS, GPU_MODELS, MODEL_INPUTS, SpeedConfig, resolve_device
from mwnet.bench.peers import PEER_METHODS, PEERS
from mwnet.bench.report import SpeedReport, format_markdown
from mwnet.bench.runners import ALL_METHODS, METHODS
from mwnet.bench.speed import run_speed_benchmark

__all__ = ["ALL_METHODS", "DEFAULT_MODELS", "GPU_MODELS", "METHODS", "MODEL_INPUTS", "PEERS", "PEER_METHODS",
           "SpeedConfig", "SpeedReport", "format_markdown", "resolve_device", "run_speed_benchmark"]
