"""The policy store: promotion and rollback on disk, and through `adaptive-perception policy` into a running node."""
from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from adaptive_perception.errors import ConfigError
from adaptive_perception.policy import PolicyFileError
from adaptive_perception.policy_store import PolicyStore
from policies import constant_policy
from rosgraph import Graph, image_msg, wait_until


@pytest.fixture
def policies(tmp_path):
    """Three constant policies that route every frame to a different tier."""
    return {name: constant_policy(tmp_path / f"{name}.onnx", probabilities, f"to-{name}")
            for name, probabilities in (("nano", (0.98, 0.01, 0.01)), ("small", (0.01, 0.98, 0.01)),
                                        ("large", (0.01, 0.01, 0.98)))}


def test_the_history_names_each_source_by_its_absolute_path(tmp_path, policies, monkeypatch):
    """A promotion from a relative path logged it as given, ambiguous once the caller's directory is forgotten."""
    monkeypatch.chdir(policies["nano"].parent)
    store = PolicyStore(tmp_path / "store")
    store.init(policies["nano"].name)
    store.promote(policies["small"].name)
    PolicyStore(tmp_path / "other").init()
    assert [h["source"] for h in store.history()] == [str(policies["nano"].resolve()), str(policies["small"].resolve())]
    assert PolicyStore(tmp_path / "other").history()[0]["source"] == "embedded:policy"


def test_promotions_at_once_take_turns_and_no_planted_link_is_written_through(tmp_path):
    """Two promotions at once lost one (both 'replaced' the same policy, previous.onnx not the one replaced) or
    failed on each other's temporary file; a link planted at the temporary file's fixed name overwrote its target."""
    candidates = [constant_policy(tmp_path / f"p{i}.onnx", (0.5, 0.3, 0.2), f"p{i}") for i in range(8)]
    store = PolicyStore(tmp_path / "store")
    store.init(str(candidates[0]))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in (".current.onnx.tmp", ".previous.onnx.tmp", ".swap.onnx"):
        (store.folder / name).symlink_to(victim)
    errors = []

    def promote(mine):
        try:
            for path in mine:
                store.promote(path)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    for round_ in range(3):
        threads = [threading.Thread(target=promote, args=(candidates[1 + i:8:2] if round_ % 2 else
                                                          candidates[2 - i:8:2],)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    store.rollback()
    assert errors == []
    promotions = [h for h in store.history() if h["action"] == "promote"]
    assert len(promotions) == 21  # 3 rounds of 7
    for before, after in zip(promotions, promotions[1:]):  # a chain: each promotion replaced the one before it
        assert after["replaced"] == before["policy_id"], (before, after)
    last = promotions[-1]
    assert (store.policy_id(store.current), store.policy_id(store.previous)) == (last["replaced"], last["policy_id"])
    assert victim.read_text() == "keep me"
    # readable as any file the process writes (mkstemp's 0600 kept a node of another user from the policy)
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    assert umask != 0o077 and (store.current.stat().st_mode & 0o777, store.previous.stat().st_mode & 0o777) == \
        (0o666 & ~umask, 0o666 & ~umask)


def test_a_store_left_with_a_policy_this_version_cannot_load_moves_forward_and_never_back(tmp_path, policies):
    """After an upgrade that changed the features, a store whose current.onnx was of the old features refused
    every promotion (the current file was validated as if it were the candidate): the store had to be started anew."""
    import onnx

    store = PolicyStore(tmp_path / "store")
    store.init(str(policies["nano"]))
    model = onnx.load(store.current)  # as the version before the feature change wrote it
    next(p for p in model.metadata_props if p.key == "adaptive_perception.feature_version").value = \
        "edge-colour-stats+ctx4/1"
    onnx.save(model, store.current)
    assert store.policy_id(store.current) == "to-nano (not loadable by this version)"
    store.promote(policies["small"])
    assert (store.policy_id(store.current), store.policy_id(store.previous)) == \
        ("to-small", "to-nano (not loadable by this version)")
    assert store.history()[-1]["replaced"] == "to-nano (not loadable by this version)"
    with pytest.raises(ConfigError, match="previous.onnx cannot be rolled back to: .*was trained on features"):
        store.rollback()  # a node could not load it: nothing moves
    assert store.policy_id(store.current) == "to-small"
    store.promote(policies["large"])
    store.rollback()  # between two loadable ones, as ever; the entry names both files by digest
    last = store.history()[-1]
    assert (last["action"], last["policy_id"], last["replaced"]) == ("rollback", "to-small", "to-large")
    assert len(last["digest"]) == len(last["replaced_digest"]) == 16 and last["digest"] != last["replaced_digest"]


def test_promote_keeps_the_previous_policy_and_rollback_swaps_them(tmp_path, policies):
    store = PolicyStore(tmp_path / "store")
    with pytest.raises(ConfigError, match="store-init"):
        store.promote(policies["small"])
    assert store.init(str(policies["nano"])) == store.current
    # store-init again: a provisioning script's re-run changes nothing; another policy is refused, not ignored
    assert store.init() == store.current and store.init(str(policies["nano"])) == store.current
    with pytest.raises(ConfigError, match="already holds policy 'to-nano'; nothing was changed: .*policy promote"):
        store.init(str(policies["large"]))
    assert store.policy_id(store.current) == "to-nano" and len(store.history()) == 1
    with pytest.raises(ConfigError, match="nothing to roll back"):
        store.rollback()
    store.promote(policies["small"], {"promote": True, "difference": 1.5})
    assert (store.policy_id(store.current), store.policy_id(store.previous)) == ("to-small", "to-nano")
    store.rollback()
    assert (store.policy_id(store.current), store.policy_id(store.previous)) == ("to-nano", "to-small")
    store.rollback()  # a second rollback undoes the first
    assert (store.policy_id(store.current), store.policy_id(store.previous)) == ("to-small", "to-nano")
    # promoting the current policy again would make it its own rollback target: refused, nothing moves
    with pytest.raises(ConfigError, match="'to-small' is already current .* nothing was changed"):
        store.promote(policies["small"])
    assert (store.policy_id(store.current), store.policy_id(store.previous)) == ("to-small", "to-nano")
    history = store.history()
    assert [(h["action"], h["policy_id"], h.get("replaced")) for h in history] == [
        ("init", "to-nano", None), ("promote", "to-small", "to-nano"), ("rollback", "to-nano", "to-small"),
        ("rollback", "to-small", "to-nano")]
    assert history[1]["decision"] == {"promote": True, "difference": 1.5}
    # no temporary file left behind; `.lock` is the store's lock
    assert sorted(p.name for p in store.folder.iterdir()) == [".lock", "current.onnx", "history.jsonl", "previous.onnx"]
    store.current.unlink()  # a store that lost its current policy says so (was a bare FileNotFoundError)
    with pytest.raises(ConfigError, match="no current.onnx there; restore it"):
        store.rollback()
    with pytest.raises(ConfigError, match="no current.onnx there; it is not a policy store"):
        PolicyStore(tmp_path / "mistyped").rollback()


def test_a_broken_candidate_is_refused_before_anything_moves(tmp_path, policies):
    store = PolicyStore(tmp_path / "store")
    store.init(str(policies["nano"]))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(policies["small"].read_bytes()[:500])
    with pytest.raises(PolicyFileError):
        store.promote(broken)
    assert store.policy_id(store.current) == "to-nano" and not store.previous.exists()
    assert [h["action"] for h in store.history()] == ["init"]


def test_a_broken_first_policy_or_a_mistyped_store_writes_nothing(tmp_path, policies):
    store = PolicyStore(tmp_path / "store")
    text = tmp_path / "text.onnx"
    text.write_text("not a policy")
    with pytest.raises(PolicyFileError, match="text.onnx"):  # names the file given, not the store's copy
        store.init(str(text))
    assert not store.folder.exists()  # nothing was written, so a later store-init starts cleanly
    with pytest.raises(ConfigError, match="no policy store there"):
        store.history()
    assert store.init(str(policies["nano"])) == store.current and store.policy_id(store.current) == "to-nano"
    with pytest.raises(ConfigError, match="is a file; give a folder"):
        PolicyStore(text).init(str(policies["nano"]))


def test_promote_and_rollback_reach_the_running_node_between_frames_and_a_restart_keeps_them(
        context, tier_models, policies, regime_frames, tmp_path):
    from adaptive_perception.detector import file_digest

    store = PolicyStore(tmp_path / "store")
    current = store.init(str(policies["nano"]))
    digests = {t: file_digest(p) for t, p in tier_models.items()}
    other_large = constant_policy(tmp_path / "other-large.onnx", (0.01, 0.01, 0.98), "to-large",
                                  {**digests, "large": "0123456789abcdef"})
    parameters = {**{f"models.{t}": str(p) for t, p in tier_models.items()}, "policy": str(current),
                  "routing_mode": "learned", "providers": ["CPUExecutionProvider"], "image_topics": ["image"],
                  "warmup_runs": 0, "audit.every": 0}
    graph = Graph(context, parameters)
    try:
        assert graph.transition("configure") and graph.transition("activate")
        graph.wait_for_image_subscriber()
        rgb = regime_frames["dense"]  # every tier finds boxes in it: their class names tell which tier ran
        sent, stop = [], threading.Event()

        def camera():  # frames keep coming, one at a time, while the policy changes
            sec = 1
            while not stop.is_set():
                assert graph.send_lockstep(image_msg(rgb, sec=sec))
                sent.append(sec)
                sec += 1

        thread = threading.Thread(target=camera)
        thread.start()
        try:
            assert wait_until(lambda: len(sent) >= 5, 20)
            # trained for another large tier: loaded all the same, and the node's warning reaches the promoter
            cli = ["adaptive-perception", "policy", "promote", str(other_large), "--store", str(store.folder),
                   "--node", f"/{graph.name}"]
            run = subprocess.run(cli, capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stderr[-2000:]
            assert f"/{graph.name} runs policy 'to-large'" in run.stdout
            warned = [line for line in run.stderr.splitlines() if line.startswith("warning: ")]
            assert len(warned) == 1 and f"warning: /{graph.name} loaded it with a warning: " in warned[0]
            assert "large tier" in warned[0] and "0123456789abcdef" in warned[0] and digests["large"] in warned[0]
            promoted_at = len(sent)
            assert wait_until(lambda: len(sent) >= promoted_at + 5, 20)
            run = subprocess.run(["adaptive-perception", "policy", "rollback", "--store", str(store.folder), "--node",
                                  f"/{graph.name}"], capture_output=True, text=True, timeout=120)
            assert run.returncode == 0 and "warning" not in run.stderr, run.stderr[-2000:]  # nano's: nothing to say
            rolled_at = len(sent)
            assert wait_until(lambda: len(sent) >= rolled_at + 5, 20)
        finally:
            stop.set()
            thread.join(timeout=30)
        assert wait_until(lambda: len(graph.routing) >= len(sent), 5)
        decisions = sorted(graph.routing, key=lambda d: d.header.stamp.sec)
        assert [d.header.stamp.sec for d in decisions] == sent  # every frame answered: none dropped or lost
        ids = [d.policy_id for d in decisions]
        # nano's policy, then large's from a frame on (and never back until the rollback), then nano's again
        first_large, last_large = ids.index("to-large"), len(ids) - 1 - ids[::-1].index("to-large")
        assert set(ids[:first_large]) == {"to-nano"} and set(ids[first_large:last_large + 1]) == {"to-large"}
        assert set(ids[last_large + 1:]) == {"to-nano"} and last_large + 1 < len(ids)
        assert all(d.tier_name == ("large" if d.policy_id == "to-large" else "nano") for d in decisions)
        ran = {d.header.stamp.sec: {r.hypothesis.class_id.split("-")[0] for det in d.detections for r in det.results}
               for d in graph.detections}
        assert all(ran[d.header.stamp.sec] == {d.tier_name} for d in decisions)  # the session that ran is that tier's
        assert graph.node.get_parameter("policy").value == str(current.resolve())
    finally:
        graph.close()
    # promoted again, a node that starts afresh on the store's current.onnx runs the promoted policy
    assert subprocess.run(["adaptive-perception", "policy", "promote", str(policies["small"]), "--store",
                           str(store.folder), "--node", ""], capture_output=True, timeout=60).returncode == 0
    restarted = Graph(context, parameters)
    try:
        assert restarted.transition("configure") and restarted.transition("activate")
        restarted.wait_for_image_subscriber()
        assert restarted.send_lockstep(image_msg(rgb, sec=1000))
        assert wait_until(lambda: len(restarted.routing) == 1, 10)
        assert (restarted.routing[0].policy_id, restarted.routing[0].tier_name) == ("to-small", "small")
        assert {r.hypothesis.class_id.split("-")[0] for det in restarted.detections[0].detections
                for r in det.results} == {"small"}
    finally:
        restarted.close()
    history = subprocess.run(["adaptive-perception", "policy", "history", "--store", str(store.folder)],
                             capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert [json.loads(line)["action"] for line in history] == ["init", "promote", "rollback", "promote"]


def test_promote_to_a_node_that_is_not_there_says_so_and_keeps_the_store_change(tmp_path, policies):
    store = PolicyStore(tmp_path / "store")
    store.init(str(policies["nano"]))
    started = time.monotonic()
    run = subprocess.run(["adaptive-perception", "policy", "promote", str(policies["large"]), "--store",
                          str(store.folder), "--node", "/nobody_here", "--timeout", "3"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 4 and "no service /nobody_here/load_policy" in run.stderr  # 2: nothing changed
    assert "the store changed" in run.stderr and "is policy 'to-large': a restarted node loads it" in run.stderr
    assert time.monotonic() - started < 30
    assert store.policy_id(store.current) == "to-large"  # a restarted node picks it up
    # promoted again once the node is back: the store stays, the node is brought in line (it was refused as
    # "already current", and the venv has no other way to load it into the node)
    again = subprocess.run(["adaptive-perception", "policy", "promote", str(policies["large"]), "--store",
                            str(store.folder), "--node", "/nobody_here", "--timeout", "3"], capture_output=True,
                           text=True, timeout=120)
    assert "policy 'to-large' is already current in" in again.stdout and "loading it into /nobody_here" in again.stdout
    assert again.returncode == 2 and "the store is unchanged and the running node did not load" in again.stderr
    assert "no service /nobody_here/load_policy" in again.stderr and "the store changed" not in again.stderr
    assert store.policy_id(store.previous) == "to-nano"  # unchanged: the rollback target stays
    assert [h["action"] for h in store.history()] == ["init", "promote"]
    # the same file without a node: refused as before, nothing changed
    refused = subprocess.run(["adaptive-perception", "policy", "promote", str(policies["large"]), "--store",
                              str(store.folder), "--node", "", "--timeout", "3"], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "policy 'to-large' is already current in" in refused.stderr, refused.stderr
    assert "(the same file)" in refused.stderr and "loading it into" not in refused.stdout
    # another file with the same id (a recomputed drift reference keeps the id) is promoted: it was refused as
    # "already current", so a restarted node kept the old file; the file it replaced is the rollback target
    same_id = constant_policy(tmp_path / "same-id.onnx", (0.2, 0.2, 0.6), "to-large")
    old_bytes = store.current.read_bytes()
    moved = subprocess.run(["adaptive-perception", "policy", "promote", str(same_id), "--store", str(store.folder),
                            "--node", "", "--timeout", "3"], capture_output=True, text=True, timeout=120)
    assert moved.returncode == 0, moved.stderr
    assert store.current.read_bytes() == same_id.read_bytes() and store.previous.read_bytes() == old_bytes
    last = store.history()[-1]
    assert (last["policy_id"], last["replaced"]) == ("to-large", "to-large") and last["digest"] != last["replaced_digest"]


def test_the_node_is_loaded_before_another_promotion_can_change_the_store(tmp_path, policies):
    """`policy promote --node` let go of the store before loading the node: a second promotion landing in between
    had the node load the other policy while the first command printed success."""
    from adaptive_perception.detector import file_digest

    store = PolicyStore(tmp_path / "store")
    store.init(str(policies["nano"]))
    other = threading.Thread(target=lambda: PolicyStore(tmp_path / "store").promote(policies["large"]))
    seen = []

    def load(path, changed):  # what the CLI does here: the node loads the store's current file
        other.start()
        other.join(3)  # without the lock it lands in milliseconds; with it, it waits until this load returns
        seen.append((other.is_alive(), file_digest(path), changed))

    store.promote(policies["small"], then=load)
    other.join(10)
    assert seen == [(True, file_digest(policies["small"]), True)]
    assert file_digest(store.current) == file_digest(policies["large"])  # and then lands
    # the current file again (a node that did not follow): no change, decided under the lock, and the node loads it
    kept = []
    assert store.promote(policies["large"], then=lambda path, changed: kept.append((file_digest(path), changed)),
                         keep_current=True) == store.current
    assert kept == [(file_digest(policies["large"]), False)] and store.history()[-1]["policy_id"] == "to-large"
    with pytest.raises(ConfigError, match="is already current"):  # without a node to follow: refused, as before
        store.promote(policies["large"])


def test_a_history_line_cut_short_is_named_not_a_traceback(tmp_path, policies, capsys):
    from adaptive_perception.cli import main

    store = PolicyStore(tmp_path / "store")
    store.init(str(policies["nano"]))
    with open(store.folder / "history.jsonl", "a") as history:
        history.write('{"action": "promote", "policy_id": "to-la\n')  # a full disk stopped the write here
    with pytest.raises(ConfigError, match=r"history.jsonl line 2 is not a JSON record \(Unterminated string"):
        store.history()
    assert main(["policy", "history", "--store", str(store.folder)]) == 2
    assert "line 2 is not a JSON record" in capsys.readouterr().err
