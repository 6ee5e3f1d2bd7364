"""`adaptive-perception bench cost`: what a fleet's perception costs per month, from measured device time.

The model (every input is on the command line or measured):

    frames per month       = robots x fps x 3600 x hours_per_day x DAYS_PER_MONTH   (365.25 / 12 days)
    device-hours per month = frames per month x device-seconds per frame / 3600
    cost per month         = device-hours per month x price per device-hour

Device-seconds per frame of a routing mode = its mean per-frame time in `bench throughput` (one worker, frames
back to back: the time a device is busy per frame, routing and everything around inference included). The
real-graph projection's frame times, where the report has them, give projected rows, labelled so. A device
keeps up with one robot when fps x device-seconds per frame <= 1.

The origin's claim (1,000 robots at 30 FPS: 42 % lower cost than always-large, $72,000 a month saved) gives
no price or device; beside it this reports our saving at the scenario asked for and the price per device-hour at
which our saving would be $72,000 at the origin's own fleet (1,000 robots, 30 FPS, 24 h a day), whatever fleet
was asked for.
"""
from __future__ import annotations

import json
from pathlib import Path

from adaptive_perception.errors import AdaptivePerceptionError, ConfigError, read_json

DAYS_PER_MONTH = 365.25 / 12
ORIGIN = {"robots": 1000, "fps": 30, "hours_per_day": 24, "cost_reduction": 0.42, "saving_per_month_usd": 72000.0,
          "throughput_x": 2.6, "latency_reduction": 0.58}


def monthly(device_s_per_frame: float, robots: int, fps: float, price: float, hours_per_day: float) -> dict:
    frames = robots * fps * 3600 * hours_per_day * DAYS_PER_MONTH
    device_hours = frames * device_s_per_frame / 3600
    return {"device_s_per_frame": device_s_per_frame, "frames_per_month": frames, "device_hours_per_month": device_hours,
            "cost_per_month_usd": device_hours * price, "devices_per_robot": fps * device_s_per_frame,
            "one_device_keeps_up": bool(fps * device_s_per_frame <= 1.0)}


def fleet(throughput: dict, robots: int, fps: float, price: float, hours_per_day: float) -> dict:
    from adaptive_perception.training.throughput import baseline

    if robots < 1 or fps <= 0 or price <= 0 or not 0 < hours_per_day <= 24:
        raise ConfigError(f"--robots {robots} --fps {fps} --price {price} --hours-per-day {hours_per_day}: need at "
                          "least 1 robot, fps > 0, a price > 0 and 0 < hours per day <= 24")
    modes = throughput["modes"]
    base = baseline(modes)
    def priced(device_s: float, share: float) -> dict:  # a cheap mode is only a saving at the accuracy it keeps
        return {**monthly(device_s, robots, fps, price, hours_per_day), "map_share_of_large": share}

    rows = {name: priced(row["busy_s"] / row["frames"], throughput["comparisons"][name]["map_share_of_large"])
            for name, row in modes.items()}
    projection = throughput.get("projection")
    projected = {}
    if projection:
        projected["always-large"] = priced(projection["always_large"]["frame_ms"] / 1e3, 1.0)
        for rule, point in projection["points"].items():
            if point is not None:
                projected[f"learned ({rule} point)"] = priced(point["frame_ms"] / 1e3, point["map_share_of_large"])
    # device-hours a month of the origin's fleet (1,000 robots, 30 FPS, 24 h) per device-second a frame
    origin_hours = monthly(1.0, ORIGIN["robots"], ORIGIN["fps"], 1.0, ORIGIN["hours_per_day"])["device_hours_per_month"]
    for table, large in ((rows, rows[base]), (projected, projected.get("always-large"))):
        for row in table.values():
            saved_hours = large["device_hours_per_month"] - row["device_hours_per_month"]
            row["saving_per_month_usd"] = saved_hours * price
            row["cost_reduction"] = 1 - row["cost_per_month_usd"] / large["cost_per_month_usd"]
            # the claimed saving is the origin's fleet's: priced at that fleet, not at the one asked for
            saved_there = (large["device_s_per_frame"] - row["device_s_per_frame"]) * origin_hours
            row["price_for_origin_saving"] = ORIGIN["saving_per_month_usd"] / saved_there if saved_there > 0 else None
    point = throughput["bars"]["operating_point"]
    return {"model": "cost/month = robots x fps x 3600 x hours_per_day x 365.25/12 x device-s per frame / 3600 x price "
                     "per device-hour; device-s per frame = bench throughput's mean per-frame time per mode",
            "inputs": {"robots": robots, "fps": fps, "price_per_device_hour_usd": price, "hours_per_day": hours_per_day,
                       "throughput_run_id": throughput["run_id"], "machine": throughput["machine"]},
            "baseline": base, "operating_point": point, "modes": rows, "projection": projected,
            "origin_claim": ORIGIN,
            "ours_at_operating_point": {"cost_reduction": rows[point]["cost_reduction"],
                                        "saving_per_month_usd": rows[point]["saving_per_month_usd"],
                                        "price_for_origin_saving": rows[point]["price_for_origin_saving"],
                                        "map_share_of_large": rows[point]["map_share_of_large"]}}


def dollars(amount: float) -> str:
    """$1,234 or -$1,234 (a negative saving: the mode costs more than always-large)."""
    return f"{'-' if round(amount) < 0 else ''}${abs(amount):,.0f}"


def table(report: dict) -> str:
    i = report["inputs"]
    lines = [f"{i['robots']} robots x {i['fps']:g} FPS x {i['hours_per_day']:g} h/day, ${i['price_per_device_hour_usd']:g} "
             f"per device-hour (device time measured on {i['machine']['cores']} CPU cores, run {i['throughput_run_id'][:8]})",
             "", "| mode | mAP50-95, share of large | device-ms / frame | devices per robot | device-hours / month | "
             "cost / month | saving vs always-large |", "|---|---|---|---|---|---|---|"]
    for title, rows in (("", report["modes"]), ("PROJECTION (real YOLOv8 costs) ", report["projection"])):
        for name, row in rows.items():
            base = " (the baseline)" if name == (report["baseline"] if not title else "always-large") else ""
            lines.append(f"| {title}{name}{base} | {row['map_share_of_large']:.0%} | {row['device_s_per_frame'] * 1e3:.1f} | "
                         f"{row['devices_per_robot']:.2f} | {row['device_hours_per_month']:,.0f} | "
                         f"{dollars(row['cost_per_month_usd'])} | "
                         f"{row['cost_reduction']:.0%} ({dollars(row['saving_per_month_usd'])}) |")
    ours, origin = report["ours_at_operating_point"], report["origin_claim"]
    price = ours["price_for_origin_saving"]
    lines += ["", f"Origin's claim at 1,000 robots x 30 FPS: {origin['cost_reduction']:.0%} lower cost, "
                  f"{dollars(origin['saving_per_month_usd'])}/month saved. Ours at '{report['operating_point']}' "
                  f"({ours['map_share_of_large']:.0%} of always-large's mAP50-95): {ours['cost_reduction']:.0%} lower, "
                  f"{dollars(ours['saving_per_month_usd'])}/month at this price; "
              + (f"the claimed $72,000 a month at 1,000 robots x 30 FPS x 24 h needs ${price:.4f} per device-hour."
                 if price else "no saving.")]
    return "\n".join(lines)


def _check(throughput: dict, path: Path) -> None:
    """Refuse a throughput report the cost model cannot trust: no always-large, no learned operating point, or
    numbers that are not the ones its own per-frame samples give."""
    from adaptive_perception.training.throughput import check_ratios

    modes = throughput["modes"]
    problem = None
    if not any(name.startswith("fixed:large") for name in modes):
        problem = "it has no fixed:large mode, the baseline every saving is against"
    elif throughput["bars"].get("operating_point") not in modes:
        problem = "it has no learned mode to price (run it with learned in --modes)"
    else:
        try:
            check_ratios(throughput)
        except (AdaptivePerceptionError, KeyError, TypeError, ZeroDivisionError) as exc:
            problem = f"its numbers do not follow from its own samples ({type(exc).__name__}: {exc})"
    if problem:
        raise AdaptivePerceptionError(f"{path}: {problem}; give an unedited report of `adaptive-perception bench "
                                      "throughput`")


def run(throughput_path: Path, robots: int, fps: float, price: float, hours_per_day: float, report_path: Path) -> dict:
    if not throughput_path.is_file():
        kind = "a folder" if throughput_path.is_dir() else "missing"
        raise AdaptivePerceptionError(f"{throughput_path} is {kind}; give the JSON file, or run `adaptive-perception "
                                      "bench throughput` first (its measured device time per frame is the cost "
                                      "model's input)")
    throughput = read_json(throughput_path, "a `bench throughput` report", ("modes", "comparisons", "bars", "run_id",
                                                                         "machine"))
    _check(throughput, throughput_path)
    report = fleet(throughput, robots, fps, price, hours_per_day)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"wrote {report_path}")
    return report
