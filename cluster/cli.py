"""`actcache plan`: print (or --json) a capture plan for a model on a cluster; exit 2 with one line if refused."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from actcache.cluster.service import service_cli
from actcache.storage.hook_points import HOOKS_HELP
from actcache.storage.store_modes import STORE_AS_HELP, STORE_MODES

if TYPE_CHECKING:
    from actcache.cluster.planner import ClusterSpec

__all__ = ["register", "run_plan", "add_pipeline_arguments"]

EXIT_REFUSED = 2


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 8,15, not {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _count(text: str) -> int:
    """Token counts as people write them: 1e9, 2.5e8, 1000000."""
    try:
        return int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens like 1e9, not {text!r}") from None


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """`actcache build` options that run the backbone as a Ray pipeline instead of in this process."""
    group = parser.add_argument_group("Ray pipeline (optional)")
    group.add_argument("--stages", type=int, default=None,
                       help="pipeline stages per replica, each owning a contiguous range of layers on its own device")
    group.add_argument("--replicas", type=int, default=1, help="data-parallel pipeline replicas")
    group.add_argument("--address", default=None,
                       help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray instance)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `plan` subcommand, and the service's `serve`, `user` and `submit`."""
    p = subparsers.add_parser(
        "plan",
        help="plan a sharded capture: stage partition, GPU memory, bytes per token, store size, bandwidth",
        description="Plan R replicas of an S-stage pipeline (one stage per GPU by default) that capture the given "
                    "layers and hooks; refuse (exit 2) plans that cannot fit.",
    )
    p.add_argument("--model-config", required=True, help="model YAML path or registry name (configs/models)")
    p.add_argument("--cluster", type=Path, help="cluster YAML (nodes, gpus_per_node, gpu_mem_gib); flags override")
    p.add_argument("--nodes", type=int, help="number of nodes (default 1)")
    p.add_argument("--gpus-per-node", type=int)
    p.add_argument("--gpu-mem-gib", type=float, help="memory of one GPU in GiB, e.g. 80")
    p.add_argument("--layers", type=_int_list, required=True, help="decoder layers to capture, e.g. 23,46,69")
    p.add_argument("--hooks", type=_names, default=("resid_post",), help=HOOKS_HELP)
    p.add_argument("--tokens", type=_count, help="corpus size in tokens, e.g. 1e9 (for the store size)")
    p.add_argument("--tokens-per-s", type=float, help="target throughput of the whole cluster (for bandwidth)")
    p.add_argument("--stages", type=int, help="pipeline stages (GPUs per replica); default: all GPUs")
    p.add_argument("--replicas", type=int, help="data-parallel pipeline replicas; default: GPUs / stages")
    p.add_argument("--micro-batch-tokens", type=int, default=8192, help="tokens per micro-batch")
    p.add_argument("--capture-dtype", help="stored dtype (default: the model's dtype)")
    p.add_argument("--store-as", default="exact", choices=STORE_MODES, help=STORE_AS_HELP)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run_plan)
    service_cli.register(subparsers)


def _cluster(args: argparse.Namespace) -> ClusterSpec:
    """Cluster from --cluster YAML and/or flags, flags winning."""
    import yaml
    from actcache.cluster.planner import ClusterSpec, PlanError

    try:
        data = yaml.safe_load(args.cluster.read_text()) if args.cluster else {}
    except (OSError, yaml.YAMLError) as error:
        reason = " ".join(str(error).split())
        raise PlanError(f"--cluster {args.cluster}: cannot read it ({reason}); give a YAML file of nodes, "
                        "gpus_per_node, gpu_mem_gib") from None
    if not isinstance(data, dict):
        raise PlanError(f"{args.cluster}: expected a YAML mapping of nodes, gpus_per_node, gpu_mem_gib")
    flags = {"nodes": args.nodes, "gpus_per_node": args.gpus_per_node, "gpu_mem_gib": args.gpu_mem_gib,
             "stages": args.stages, "replicas": args.replicas}
    data = {"nodes": 1, **data, **{k: v for k, v in flags.items() if v is not None}}
    missing = [f"--{k.replace('_', '-')}" for k in ("gpus_per_node", "gpu_mem_gib") if k not in data]
    if missing:
        raise PlanError(f"no cluster size: give {' and '.join(missing)} (or --cluster FILE)")
    return ClusterSpec.from_dict(data)


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan; on refusal print one line to stderr and return 2."""
    from actcache.cache_builder.model_registry import ModelSpecError, load_model_spec
    from actcache.cluster.planner import CaptureRequest, PlanError, format_plan, plan_build

    try:
        spec = load_model_spec(args.model_config)
        capture = CaptureRequest(layers=args.layers, hooks=args.hooks, tokens=args.tokens,
                                 tokens_per_s=args.tokens_per_s, micro_batch_tokens=args.micro_batch_tokens,
                                 capture_dtype=args.capture_dtype, store_as=args.store_as)
        plan = plan_build(spec, _cluster(args), capture)
    except (PlanError, ModelSpecError) as err:
        print(f"plan refused: {err}", file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0
