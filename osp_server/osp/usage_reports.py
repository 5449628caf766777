"""UsageIndication components as call-leg reports (what storage keeps of them)."""

from __future__ import annotations

from osp_server.cdr.legs import (
    LegKey,
    LegReport,
    LegValues,
    bounded_decimal,
    clip,
    leg_state,
    report_digest,
)
from osp_server.osp.messages import UsageIndication


def leg_report(component: UsageIndication) -> LegReport:
    """One component as a report of its leg: the key, the state, bounded values."""
    cause = component.termination_cause
    return LegReport(
        key=LegKey(
            transaction_id=component.transaction_id or 0,
            role=(component.role or "unknown")[:16],
            destination=(component.destination or "")[:256],
            component_id=component.component_id[:64],
        ),
        state=leg_state(component.role_state),
        timestamp=component.timestamp,
        values=LegValues(
            call_id=component.call_id,
            calling=clip(component.calling),
            called=clip(component.called),
            start_time=component.start_time,
            alert_time=component.alert_time,
            connect_time=component.connect_time,
            end_time=component.end_time,
            amount=bounded_decimal(component.amount),
            post_dial_delay=bounded_decimal(component.post_dial_delay),
            termination_cause_type=clip(cause.type if cause else None, 16),
            termination_cause_code=clip(cause.code if cause else None, 16),
            release_source=clip(component.release_source, 16),
        ),
        fields=component.fields,
        digest=report_digest(component.fields),
    )
