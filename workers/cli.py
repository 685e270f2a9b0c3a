"""``gfm``: the one console script. Subcommands parse, build settings once, and call a typed function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from workers.settings import Settings

if TYPE_CHECKING:
    from models.train import TrainConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gfm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the embedded stack and the demo; serve until Ctrl-C")
    up.add_argument("--no-demo", action="store_true", help="do not publish the demo catalogue and events")
    up.add_argument("--exit-after-demo", action="store_true", help="stop everything once the demo answered")

    catalog = sub.add_parser("catalog", help="catalogue commands")
    catalog_sub = catalog.add_subparsers(dest="action", required=True)
    load = catalog_sub.add_parser("load", help="publish a dataset's items to the catalogue topic")
    load.add_argument("--data", type=Path, required=True, help="dataset folder (items.tsv, events.tsv)")

    replay = sub.add_parser("replay", help="produce a dataset's events into Kafka")
    replay.add_argument("--data", type=Path, required=True, help="dataset folder (items.tsv, events.tsv)")
    replay.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    replay.add_argument("--limit", type=int, default=None, help="replay only the first N events")

    worker = sub.add_parser("worker", help="run one service")
    worker.add_argument("service", choices=["streams", "refresher", "api"])

    recommend = sub.add_parser("recommend", help="a user's recommendations, from the running API")
    recommend.add_argument("user_id")
    recommend.add_argument("--type", default=None, help="item type")
    recommend.add_argument("-k", type=int, default=10)

    train = sub.add_parser("train", help="train the unified 2T-HGNN on a dataset; writes a model directory")
    train.add_argument("--data", type=Path, required=True, help="dataset folder in the shared layout")
    train.add_argument("--out", type=Path, default=None, help="parent of the model directory (var/models)")
    _model_options(train)
    _trend_weight_option(train)

    evaluate = sub.add_parser("evaluate", help="the ablation table on a dataset; writes reports/<dataset>.json|md")
    evaluate.add_argument("--data", type=Path, required=True, help="dataset folder in the shared layout")
    evaluate.add_argument("--out", type=Path, default=Path("reports"))
    evaluate.add_argument("--models", default=None, help="comma-separated rows (default: all)")
    evaluate.add_argument("--split", default="test", choices=["test", "valid"],
                          help="targets: test, or valid for model selection (the holdout's valid rows; for a time "
                               "split, a second cut inside the training period); valid writes <dataset>-valid.*")
    evaluate.add_argument("--seeds", type=int, default=1,
                          help="train 2t_hgnn and 2t_no_gnn with this many seeds; the table shows the means")
    evaluate.add_argument("--fixed-hgnn-seed", action="store_true",
                          help="seeds vary the two-towers only; the HGNN is trained once (for cost)")
    evaluate.add_argument("--ablation", action="store_true",
                          help="add the 2t_hgnn-no_<lever> rows: the unified model with each lever off, and "
                               "2t_hgnn-trend_weight_1 (the learned trend weight, not multiplied)")
    _model_options(evaluate)
    _trend_weight_option(evaluate)

    online = sub.add_parser("online-eval", help="the served model evaluated online: live refresh versus frozen at the "
                            "cut versus a periodic full recompute; writes reports/online-<dataset>.json|md")
    online.add_argument("--data", type=Path, required=True, help="dataset folder with the global time split")
    online.add_argument("--out", type=Path, default=Path("reports"))
    online.add_argument("--rate", type=float, default=100.0, help="test events produced per second (default 100)")
    online.add_argument("--limit-events", type=int, default=20_000,
                        help="replay the first N test events (default 20000; 0: the whole test period)")
    online.add_argument("--every", type=int, default=5_000,
                        help="the periodic mode's full recompute period, in test events (default 5000)")
    online.add_argument("--partitions", type=int, default=None,
                        help="Kafka partitions of the evaluation's stack (default: the settings'); the report is "
                             "then named online-<dataset>-partitions-<N>; -whole-period is added with --limit-events 0")
    _model_options(online)

    status = sub.add_parser("status", help="the dashboard's key figures once, from the running API")
    status.add_argument("--json", action="store_true", help="print the figures as JSON")

    sub.add_parser("settings", help="print the effective settings as JSON")
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hgnn-epochs", type=int, default=None)
    parser.add_argument("--tt-epochs", type=int, default=None, help="two-tower epochs")


def _positive_multiplier(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a positive multiplier")
    return value


def _trend_weight_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trend-weight", type=_positive_multiplier, default=None,
                        help="multiply the users' learned trend weight by this instead of choosing the multiplier "
                             "on validation data (which trains a 2T-HGNN on the validation split; for quick runs)")


def _train_config(args: argparse.Namespace, settings: Settings) -> TrainConfig:
    from dataclasses import replace

    from models.hgnn import HGNNConfig
    from models.train import TrainConfig
    from models.twotower import TwoTowerConfig

    hgnn = HGNNConfig()
    if args.hgnn_epochs is not None:
        hgnn = replace(hgnn, epochs=args.hgnn_epochs)
    towers = TwoTowerConfig(history=settings.streams.history_per_type)
    if args.tt_epochs is not None:
        towers = replace(towers, epochs=args.tt_epochs)
    return TrainConfig(graph=settings.streams.graph_config(), graph_cache=settings.var_dir / "cache", hgnn=hgnn,
                       two_tower=towers)


def _online_eval(args: argparse.Namespace, settings: Settings, command: str) -> int:
    import torch

    from models.evaluate import Split
    from models.serving import cached_model
    from models.train import fingerprint, serving_trend_tau, serving_trend_weight
    from workers.online import OnlineOptions, run_online_eval
    from workers.services import build_encoder

    try:
        options = OnlineOptions(rate=args.rate, limit_events=args.limit_events or None, every=args.every,
                                partitions=args.partitions)
    except ValueError as error:
        print(f"gfm online-eval: {error}", file=sys.stderr)
        return 2
    config = _train_config(args, settings)
    torch.set_num_threads(1)

    def model_dir(split: Split) -> Path:  # trained on the events before the cut, cached under var_dir/models
        tau = serving_trend_tau(args.data, config.two_tower)
        encoder = build_encoder(settings, progress=True)
        directory, trained = cached_model(split, encoder, config, settings.var_dir / "models",
                                          f"{fingerprint(args.data)}-before-cut", tau,
                                          lambda: serving_trend_weight(args.data, encoder, config, tau))
        print(f"model: {directory} ({'trained' if trained else 'cached'})", flush=True)
        return directory

    path = run_online_eval(settings, args.data, options, command, args.out, model_dir)
    print(path.with_suffix(".md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gfm`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka", "faust", "mode", "httpx"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    settings = Settings()

    if args.command == "up":
        from workers.stack import up

        return up(settings, demo=not args.no_demo, exit_after_demo=args.exit_after_demo)

    if args.command == "catalog":
        from models.datasets import load_items
        from workers.kafka_io import ensure_topics, make_producer, publish_catalog

        ensure_topics(settings.kafka)
        producer = make_producer(settings.kafka)
        try:
            count = publish_catalog(producer, settings.kafka, load_items(args.data))
        finally:
            producer.close()
        print(f"published {count} items to {settings.kafka.topic('catalog')}")
        return 0

    if args.command == "replay":
        from workers.kafka_io import EventSink, dataset_events, ensure_topics, make_producer, replay

        ensure_topics(settings.kafka)
        producer = make_producer(settings.kafka)
        try:
            events, total = dataset_events(args.data, args.limit)
            summary = replay(events, EventSink(producer, settings.kafka), total, rate=args.rate,
                             progress=sys.stderr.isatty())
        finally:
            producer.close()
        print(f"sent {summary.sent}, failed {summary.failed}, skipped (item not in catalogue) "
              f"{summary.skipped_unknown_item}, {summary.seconds:.1f} s, {summary.events_per_s:.0f} events/s")
        return 0 if summary.failed == 0 else 1

    if args.command == "worker":
        from workers import services

        runner = {"streams": services.run_streams, "refresher": services.run_refresher,
                  "api": services.run_api}[args.service]
        runner(settings)
        return 0

    if args.command == "recommend":
        from urllib.parse import quote

        from workers.stack import http_json

        query = f"k={args.k}" + (f"&type={quote(args.type)}" if args.type else "")
        url = f"http://{settings.api.host}:{settings.api.port}/users/{quote(args.user_id)}/recommendations?{query}"
        try:
            status, body = http_json(url)
        except OSError as error:
            print(f"the API at {url} is not reachable ({error}); start it with `gfm up`", file=sys.stderr)
            return 2
        if status != 200:
            print(body.get("detail", body) if isinstance(body, dict) else body, file=sys.stderr)
            return 1
        for rank, item in enumerate(body["items"], 1):
            print(f"{rank:>3}. {item['score']:.3f}  {item['item_type']:<10} {item['item_id']:<12} {item['title']}")
        return 0

    if args.command in ("train", "evaluate"):
        from models.evaluate import load_split
        from workers.services import build_encoder

        config = _train_config(args, settings)
        encoder = build_encoder(settings, progress=True)
        command = "gfm " + " ".join(argv if argv is not None else sys.argv[1:])
        if args.command == "train":
            from models.serving import train_for_serving
            from models.train import fingerprint, serving_trend_tau, serving_trend_weight

            tau = serving_trend_tau(args.data, config.two_tower)
            weight = (serving_trend_weight(args.data, encoder, config, tau) if args.trend_weight is None
                      else args.trend_weight)
            split = load_split(args.data, everything=True)
            directory = train_for_serving(split, encoder, config, args.out or settings.var_dir / "models",
                                          fingerprint(args.data), tau, weight)
            print(f"model written to {directory}\nserve it with GFM_MODEL__DIR={directory} gfm up")
            return 0
        from models.train import (
            ABLATION_ROWS,
            MODELS,
            WEIGHT_ROWS,
            choose_trend_tau,
            choose_trend_weight,
            run_evaluation,
            write_report,
        )

        known = MODELS + tuple(ABLATION_ROWS) + tuple(r for r in WEIGHT_ROWS if r not in ABLATION_ROWS)
        models = tuple(args.models.split(",")) if args.models else MODELS
        unknown = set(models) - set(known)
        if unknown:
            print(f"--models: unknown {sorted(unknown)}; choose from {', '.join(known)}", file=sys.stderr)
            return 2
        if args.seeds < 1:
            print(f"--seeds: {args.seeds} is not a positive count", file=sys.stderr)
            return 2
        if args.ablation:
            models += tuple(a for a in ABLATION_ROWS if a not in models)
        split = load_split(args.data, args.split)
        name = f"{split.name}-valid" if args.split == "valid" else split.name
        valid = split if args.split == "valid" else load_split(args.data, "valid")
        tau, chosen = choose_trend_tau(valid)
        if args.trend_weight is None:  # the 2T-HGNN of seed 0 trained on the validation split, once per run
            weight, weight_record = choose_trend_weight(valid, encoder, config, tau)
        else:
            weight, weight_record = args.trend_weight, {"weight": args.trend_weight, "weight_valid_hr10": None}
        chosen = {**chosen, **weight_record}
        rows = run_evaluation(split, encoder, config, models, args.seeds, seed_hgnn=not args.fixed_hgnn_seed,
                              on_row=lambda so_far: write_report(split, so_far, config, command, args.out, name,
                                                                 chosen),
                              trend_tau=tau, trend_weight=weight)
        path = write_report(split, rows, config, command, args.out, name, chosen)
        print(path.with_suffix(".md").read_text())
        return 0

    if args.command == "online-eval":
        return _online_eval(args, settings, "gfm " + " ".join(argv if argv is not None else sys.argv[1:]))

    if args.command == "status":
        from monitoring.status import render_status
        from workers.stack import http_json

        url = f"http://{settings.api.host}:{settings.api.port}/dashboard/data"
        try:
            code, body = http_json(url)
        except OSError as error:
            print(f"the API at {url} is not reachable ({error}); start it with `gfm up`", file=sys.stderr)
            return 2
        if code != 200:
            print(f"{url} answered {code}: {body}", file=sys.stderr)
            return 1
        print(json.dumps(body["points"][-1][1] if body["points"] else {}, indent=2) if args.json
              else render_status(body))
        return 0

    if args.command == "settings":
        print(json.dumps(settings.model_dump(mode="json"), indent=2))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
