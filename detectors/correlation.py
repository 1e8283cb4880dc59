"""Correlated alerts fold into their cause: Alertmanager's inhibition rules, for spend.

A loop raises its run's context, and minutes after the loop alert the spike
detector sees the workflow's spend jump: one incident, two pages. The
`Inhibitor` runs after the detectors in the Monitor. It keeps each workflow's
open loop and zombie alerts (the *sources*, in Alertmanager's terms) and judges
every spike alert (the *target*) by what the spike detector says was behind
its excess (`evidence["excess"]` and `evidence["behind"]`, see
`detectors/spikes.py`): when the runs and agents of open sources spent at
least `share` of the excess (over their own normal: an agent that always
spends half the workflow did not spend half of a surge), the spike is no new
page. It is dropped, and each source that spent part of it is emitted again
under its own alert id with `revision` one higher and its `workflow_impact` in
the evidence and summary, so sinks edit the message they posted instead of
paging again.

Unlike Alertmanager, whose rules match labels, the rule here is about money:
a healthy traffic surge in a workflow with one looping run still pages,
because the loop did not spend it. A source is open while its subject spends:
it closes when a resolved alert of its id passes, or once its run or agent
made no call for `quiet` seconds of event time (killed, finished, or gone),
and a later spike then pages. It fails open: a source among more spenders
than a spike alert names (`spikes.TOP` a dimension) counts only if named.

>>> from schemas.alerts import Alert
>>> inh = Inhibitor(share=0.6)
>>> loop = Alert(alert_id="loop:coder:r-7", kind="loop", severity="critical", workflow="coder", ts=100.0,
...              summary="run r-7 in coder: repeated action", run_id="r-7", agent_id="a-1")
>>> spike = Alert(alert_id="spike:coder:workflow:120", kind="spike", severity="critical", workflow="coder",
...               ts=180.0, summary="context bloat in coder", evidence={
...     "cause": "context bloat", "excess": {"usd": 3.0, "since": 0.0},
...     "features": {"spend": {"ratio": 4.1}},
...     "behind": {"runs": [{"run_id": "r-7", "agent_id": "a-1", "over_normal_usd": 2.4}], "agents": []}})
>>> [(a.alert_id, a.revision, a.evidence.get("workflow_impact", {}).get("share_of_excess"))
...  for a in inh.fold([loop, spike])]  # the loop alert, then its update in place of the spike
[('loop:coder:r-7', 0, None), ('loop:coder:r-7', 1, 0.8)]
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from detectors import state
from detectors.pricing.money import fmt_usd
from schemas.alerts import Alert
from schemas.structs import Event

SOURCES = ("loop", "zombie")
"""Alert kinds that can be the cause of a workflow's spike."""
QUIET = 900.0
"""Seconds of event time without a call from its subject after which a source closes (the loop
detector's idle time: a run that long without a call is over)."""
MAX_SOURCES = 200
"""Open sources kept per workflow (its state is one table record); past it the quietest closes."""
V = 1


class Source:
    """An open loop or zombie alert: as it first fired, how often it was updated, and when its
    subject last called."""

    __slots__ = ("alert", "revision", "last")

    def __init__(self, alert: Alert, revision: int = 0, last: float | None = None):
        self.alert, self.revision = alert, revision
        self.last = alert.ts if last is None else last

    @property
    def subject(self) -> tuple[str, str]:
        """A loop is its run's; a zombie is its agent's, or the run it went on spending on."""
        if self.alert.run_id is not None:
            return ("run", self.alert.run_id)
        return ("agent", self.alert.agent_id or "")


class WorkflowSources:
    """One workflow's open sources, by alert id and by subject (run or agent)."""

    __slots__ = ("sources", "runs", "agents")

    def __init__(self) -> None:
        self.sources: dict[str, Source] = {}
        self.runs: dict[str, str] = {}  # run id -> alert id of its open source
        self.agents: dict[str, str] = {}

    def add(self, source: Source) -> None:
        kind, name = source.subject
        (self.runs if kind == "run" else self.agents)[name] = source.alert.alert_id
        self.sources[source.alert.alert_id] = source

    def close(self, alert_id: str) -> None:
        source = self.sources.pop(alert_id, None)
        if source is not None:
            kind, name = source.subject
            subjects = self.runs if kind == "run" else self.agents
            if subjects.get(name) == alert_id:
                del subjects[name]


class Inhibitor:
    """Folds spikes into the open loop and zombie alerts that spent them (see the module doc).

    Per event (`observe`): O(1), and only for workflows with an open source. Its state is per
    workflow, dumped and loaded with the workflow's detectors.
    """

    kind = "inhibitor"

    def __init__(self, share: float = 0.6, quiet: float = QUIET):
        self.share, self.quiet = share, quiet
        self.workflows: dict[str, WorkflowSources] = {}

    def observe(self, event: Event, cost_micros: int) -> None:
        """A call by an open source's subject keeps the source open."""
        wf = self.workflows.get(event.workflow)
        if wf is None or event.type != "usage":
            return
        for alert_id in (wf.runs.get(event.run_id or ""), wf.agents.get(event.agent_id or "")):
            if alert_id is not None:
                source = wf.sources[alert_id]
                source.last = max(source.last, event.ts)

    def tick(self, now: float) -> None:
        """Close the sources whose subject has been quiet for `quiet` seconds at event time `now`."""
        for name, wf in list(self.workflows.items()):
            for alert_id in [i for i, s in wf.sources.items() if now - s.last >= self.quiet]:
                wf.close(alert_id)
            if not wf.sources:
                del self.workflows[name]

    def fold(self, alerts: list[Alert]) -> list[Alert]:
        """`alerts` with each spike its open sources explain replaced by their updates; sources
        among `alerts` count for the spikes among them (a zombie and a spike of the same tick)."""
        for alert in alerts:
            if alert.kind in SOURCES:
                self._track(alert)
        out: list[Alert] = []
        for alert in alerts:
            updates = self._explained(alert) if alert.kind == "spike" and alert.status == "firing" else None
            out.extend([alert] if updates is None else updates)
        return out

    def _track(self, alert: Alert) -> None:
        wf = self.workflows.get(alert.workflow)
        if alert.status == "resolved":
            if wf is not None:
                wf.close(alert.alert_id)
                if not wf.sources:
                    del self.workflows[alert.workflow]
            return
        if alert.run_id is None and alert.agent_id is None:
            return  # no subject whose spend could be told apart
        if wf is None:
            wf = self.workflows[alert.workflow] = WorkflowSources()
        known = wf.sources.get(alert.alert_id)
        if known is not None:  # fired again (a worker that restarted before it saved)
            known.alert, known.last = alert, max(known.last, alert.ts)
            return
        if len(wf.sources) >= MAX_SOURCES:
            wf.close(min(wf.sources.values(), key=lambda s: s.last).alert.alert_id)
        wf.add(Source(alert))

    def _explained(self, spike: Alert) -> list[Alert] | None:
        """The updated sources if open sources spent at least `share` of the spike's excess, else None."""
        wf = self.workflows.get(spike.workflow)
        excess = float(spike.evidence.get("excess", {}).get("usd", 0.0))
        if wf is None or excess <= 0:
            return None
        behind = spike.evidence.get("behind", {})
        spent: dict[str, float] = {}  # source alert id -> USD its subject spent over its normal in the window
        union = 0.0  # the same for all sources, each call counted once (a run inside a source agent)
        for entry in behind.get("agents", []):
            if (alert_id := wf.agents.get(entry["agent_id"])) is not None:
                spent[alert_id] = spent.get(alert_id, 0.0) + entry["over_normal_usd"]
                union += entry["over_normal_usd"]
        for entry in behind.get("runs", []):
            if (alert_id := wf.runs.get(entry["run_id"])) is not None:
                spent[alert_id] = spent.get(alert_id, 0.0) + entry["over_normal_usd"]
                union += 0.0 if entry.get("agent_id") in wf.agents else entry["over_normal_usd"]
        explained = min(union, excess) / excess
        if explained < self.share:
            return None
        return [self._update(wf.sources[alert_id], spike, usd, excess, explained) for alert_id, usd in spent.items()]

    @staticmethod
    def _update(source: Source, spike: Alert, usd: float, excess: float, explained: float) -> Alert:
        """The source's alert as first fired, with the workflow impact of the spike folded into it."""
        source.revision += 1
        base = source.alert
        ratio = spike.evidence.get("features", {}).get("spend", {}).get("ratio")
        cause = spike.evidence.get("cause", "spend spike")
        share = min(usd, excess) / excess
        impact = {
            "spike_alert_id": spike.alert_id, "cause": cause, "since": spike.evidence["excess"].get("since"),
            "spend_ratio": ratio, "excess_usd": round(excess, 6), "share_of_excess": round(share, 3),
            "sources_share_of_excess": round(explained, 3), "spikes_folded": source.revision,
        }
        how_much = f" (spend ×{ratio:.1f})" if isinstance(ratio, (int, float)) else ""
        summary = (f"{base.summary}; workflow impact: {share:.0%} of the {fmt_usd(round(excess * 1e6))} over "
                   f"normal in a {cause} on {spike.workflow}{how_much}, folded into this alert")
        return base.model_copy(update={"revision": source.revision, "summary": summary,
                                       "evidence": {**base.evidence, "workflow_impact": impact}})

    def dump(self, workflow: str) -> dict[str, Any] | None:
        wf = self.workflows.get(workflow)
        if wf is None:
            return None
        return {"v": V, "sources": [{"alert": s.alert.model_dump(mode="json"), "revision": s.revision,
                                     "last": s.last} for s in wf.sources.values()]}

    def load(self, workflow: str, doc: dict[str, Any]) -> None:
        with state.loading(self.kind, workflow):
            d = state.upgrade(doc, self.kind, workflow, {}, V)
            wf = WorkflowSources()
            for s in state.seq(d["sources"]):
                entry = state.obj(s)
                try:
                    alert = Alert.model_validate(entry["alert"])
                except ValidationError as exc:
                    raise ValueError(f"a source alert is not an alert: {exc.errors()[0]['msg']}") from None
                if alert.kind not in SOURCES or alert.workflow != workflow:
                    raise ValueError(f"a {alert.kind} alert of workflow {alert.workflow!r} is no source here")
                wf.add(Source(alert, state.count(entry["revision"]), state.num(entry["last"])))
        self.workflows[workflow] = wf
