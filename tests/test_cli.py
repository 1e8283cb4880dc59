"""CLI and config: bad input answers with one clear line and a non-zero status, never a traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spendwatch.cli import main
from spendwatch.config import ConfigError, load_settings
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spendwatch", *args], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("text,expected", [
    ("timezone = 'Mars/Olympus'", "unknown timezone 'Mars/Olympus'"),
    ("[budgets.workflows.w]\ndaily_usd = -5", "budgets.workflows.w.daily_usd: Input should be greater than or equal to 0.01"),
    ("[budgets.workflows.w]\ndaily_usd = 1e-7", "budgets.workflows.w.daily_usd: Input should be greater than or equal to 0.01"),
    ("[budgets.teams.t]\nmonthly_usd = nan", "budgets.teams.t.monthly_usd: Input should be a finite number"),
    ("[routing]\ngroup_wait_s = inf", "routing.group_wait_s: Input should be a finite number"),
    ("tick_every_s = 1e-300", "tick_every_s: Input should be greater than or equal to 0.05"),
    ("[budgets.workflows.w]\ndialy_usd = 5", "budgets.workflows.w.dialy_usd: Extra inputs are not permitted"),
    ("[budgets]\nthresholds = [0, 50]", "thresholds are percentages"),
    ("[pricing.overrides.'gpt-4o']\ninput_per_mtok = 'cheap'\noutput_per_mtok = 1",
     "pricing.overrides.gpt-4o.input_per_mtok"),
    ("timezone = ", "not valid TOML"),
    ("[pricing]\noverrides_file = 'missing.toml'", "overrides_file"),
    ("[topics]\npartitions = 0", "topics.partitions"),
])
def test_bad_config_files_are_explained(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.toml") as err:
        load_settings(path)
    assert expected in str(err.value)


def test_config_overrides_file_and_defaults(tmp_path):
    (tmp_path / "prices.toml").write_text("['in-house-7b']\ninput_per_mtok = 0.2\noutput_per_mtok = 0.4\n")
    cfg = tmp_path / "ok.toml"
    cfg.write_text("timezone = 'Asia/Tokyo'\n[pricing]\noverrides_file = 'prices.toml'\n"
                   "[budgets.teams.cx]\nmonthly_usd = 1000\n")
    s = load_settings(cfg)
    assert s.timezone == "Asia/Tokyo" and s.budgets.thresholds == [50, 75, 90, 100]
    assert s.price_book().rate("in-house-7b").source == "override:in-house-7b"


def test_missing_config_file_via_cli_is_one_line(tmp_path):
    r = run_cli("worker", "--broker", "kafka://127.0.0.1:1", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2
    assert r.stderr.decode().strip() == f"spendwatch: error: {tmp_path / 'nope.toml'}: no such config file"


def test_data_dir_without_a_broker_is_refused_with_the_reason(tmp_path):
    r = run_cli("worker", "--data-dir", str(tmp_path / "tables"))
    assert r.returncode == 2
    assert "--data-dir needs --broker" in r.stderr.decode() and not (tmp_path / "tables").exists()


@pytest.mark.parametrize("args,expected", [
    (["worker", "--broker", "localhost"], "is not a broker address; use kafka://HOST:PORT"),
    (["worker", "--broker", "kafka://host:99999"], "is not a broker address"),
    (["demo", "--duration", "-3"], "must be > 0"),
    (["demo", "--duration", "soon"], "is not a number"),
    (["frobnicate"], "invalid choice"),
    (["emit"], "the following arguments are required"),
])
def test_bad_arguments(capsys, args, expected):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err


def test_emit_rejects_a_bad_line_by_number_and_skip_bad_counts(broker, tmp_path):
    good = b'{"type":"usage","event_id":"a","ts":1768435200,"workflow":"w","model":"m","input_tokens":1,' \
           b'"output_tokens":1}'
    path = tmp_path / "events.jsonl"
    path.write_bytes(good + b"\n{broken\n")
    r = run_cli("emit", str(path), "--broker", broker.url, "--topic", "cli-emit-test")
    assert r.returncode == 2 and "line 2: not valid JSON" in r.stderr.decode() and "--skip-bad" in r.stderr.decode()
    r = run_cli("emit", "-", "--broker", broker.url, "--topic", "cli-emit-test", "--skip-bad",
                stdin=path.read_bytes())
    assert r.returncode == 0, r.stderr
    assert "published 1 events to cli-emit-test, skipped 1 bad lines" in r.stdout.decode()


def test_emit_missing_file():
    r = run_cli("emit", "/no/such/file.jsonl", "--broker", "kafka://127.0.0.1:9")
    assert r.returncode == 2 and "no such file" in r.stderr.decode()


def test_the_demo_fires_a_budget_alert_within_its_first_minute(tmp_path):
    """What `make run` shows a newcomer: broker, worker, traffic, an alert, and a dashboard URL whose
    API shows live spend per workflow, cost per outcome, the demo's loop alert and its kill.

    `--duration 40`: the summary printed on exit must list a budget alert by then, within the first
    minute with margin (alone it fires ~20 s in, the loop's kill ~18 s in)."""
    import re
    import urllib.request

    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "spendwatch", "demo", "--duration", "40", "--port", "0"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = wait_for(lambda: re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)", log.read_text()), 90,
                       "the demo to print its dashboard URL", describe=lambda: log.read_text()[-2000:]).group(1)

        def api(path):
            with urllib.request.urlopen(url + "api/v1/" + path, timeout=5) as r:
                return json.loads(r.read())

        last = {}

        def seen():
            last.update(rows=api("workflows")["workflows"], kills=api("kills")["kills"],
                        alerts=[a["kind"] for a in api("alerts")["alerts"]], outcomes=api("outcomes")["outcomes"])
            return (len(last["rows"]) >= 4 and all(r["today_usd"] > 0 for r in last["rows"]) and last["outcomes"]
                    and "loop" in last["alerts"] and any(k["scope"] == "run_id" for k in last["kills"]))

        wait_for(seen, 45, "spend, outcomes, the loop alert and its kill on the dashboard", describe=lambda: last)
        rows, kills, outcomes = last["rows"], last["kills"], last["outcomes"]
        assert {"support-bot", "code-review", "rag-search", "sales-agent"} <= {r["workflow"] for r in rows}
        assert kills[0]["release"].startswith("spendwatch release --run ")
        assert any(o["usd_per_outcome"] and o["usd_per_outcome"] > 0 for o in outcomes)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "alerts raised:" in text and "budget=" in text, text[-2000:]


def test_help_teaches_with_examples():
    r = run_cli("--help")
    assert r.returncode == 0 and b"spendwatch demo --duration 60" in r.stdout


def test_schema_export_command(tmp_path):
    r = run_cli("schema", "export", str(tmp_path))
    assert r.returncode == 0 and (tmp_path / "usage_event.schema.json").exists()


def test_example_config_in_the_repo_is_valid():
    s = load_settings(ROOT / "spendwatch.example.toml")
    assert s.budgets.workflows["support-bot"].daily_usd == 200


def test_sinks_are_switched_on_by_their_environment(monkeypatch):
    from rich.console import Console

    from spendwatch.config import Settings
    from spendwatch.runner import make_sinks

    assert [s.name for s in make_sinks(Settings(), Console())] == ["console"]
    monkeypatch.setenv("SPENDWATCH_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", "R0UTING")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    settings = Settings.model_validate({"slack": {"channel": "#spend"}})
    assert [s.name for s in make_sinks(settings, Console())] == ["console", "slack", "webhook", "pagerduty"]


def test_emit_waits_for_the_producer_instead_of_dropping(broker, tmp_path):
    """A file larger than the emitter's buffer: it dropped what did not fit (33,881 of a
    134k-line file with the 100k buffer) and still printed the number of lines read."""
    import asyncio
    import io

    import orjson

    from spendwatch.cli.emit import emit_lines
    from tests.kafka_io import create_topic, read_all

    create_topic(broker.bootstrap, "cli-emit-backpressure", partitions=2)
    lines = b"".join(orjson.dumps({"type": "usage", "event_id": f"e{i}", "ts": 1768435200 + i, "workflow": f"w{i % 7}",
                                   "model": "gpt-4o", "input_tokens": 10, "output_tokens": 1}) + b"\n"
                     for i in range(3000))
    done = asyncio.run(emit_lines(io.BytesIO(lines), broker.url, "cli-emit-backpressure", max_buffer=50))
    events = [ev for _, value in read_all(broker.bootstrap, "cli-emit-backpressure") for ev in orjson.loads(value)]
    assert (done.sent, done.failed, len({e["event_id"] for e in events})) == (3000, 0, 3000)


def test_emit_counts_what_kafka_never_confirmed_as_failed(tmp_path, monkeypatch):
    import asyncio
    import io

    import spendwatch.cli.emit as emit

    monkeypatch.setattr(emit, "FLUSH_TIMEOUT_S", 1.0)
    line = b'{"type":"usage","event_id":"a","ts":1768435200,"workflow":"w","model":"m","input_tokens":1,"output_tokens":1}\n'
    done = asyncio.run(emit.emit_lines(io.BytesIO(line * 5), "kafka://127.0.0.1:9", "t"))
    assert (done.sent, done.failed) == (0, 5)
