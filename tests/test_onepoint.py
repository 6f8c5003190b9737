"""OnePoint Global and DIY Surveys callbacks: every sample, normalized field by field.

Samples live in receiver/samples/onepoint/ and receiver/samples/diy/: ``.json`` files are JSON
bodies, ``.form`` files ``application/x-www-form-urlencoded`` bodies and ``.query`` files the
raw query string of a GET callback (empty body). OnePoint samples are parsed with
:class:`OnePointProvider`, DIY samples with :class:`DiyProvider`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from samples import PAYLOADS, payload
from structlog.testing import capture_logs

from receiver import Event, EventType, PayloadError, UnsupportedPayload
from receiver.providers import DiyProvider, OnePointProvider

ONEPOINT = OnePointProvider()
DIY = DiyProvider()
PROVIDERS = {"onepoint": ONEPOINT, "diy": DIY}

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
CHANNEL = "sms-callbacks"


BST = timezone(timedelta(hours=1))
CET = timezone(timedelta(hours=1))
AEST = timezone(timedelta(hours=10))
CST = timezone(timedelta(hours=8))

APPT = (
    "Your appointment at Harley Dental is confirmed for Thu 7 Mar at 10:30. Reply STOP to opt out"
)
SURVEY = "Hi from DIY Surveys! Tell us how we did: https://diy.li/s/Q9x4Rt Reply STOP to opt out"
REPLY = (
    "Hi, thanks for the reminder. I can't make Thursday any more because of work, "
    "could we move it to the following Monday morning instead? Anything before 11 "
    "is fine. Also please text rather than call. Cheers, Priya"
)

FIELDS = (
    "type",
    "provider",
    "provider_type",
    "message_id",
    "source",
    "destination",
    "text",
    "status",
    "provider_status",
    "occurred_at",
    "provider_timestamp",
    "metadata",
    "inbound",
    "test",
    "lookup",
    "reachable",
    "carrier",
    "number_type",
    "segments",
    "channel",
)


def want(
    *,
    type: EventType,
    provider_type: str,
    message_id: str,
    source: str,
    destination: str,
    text: str | None = None,
    status: str | None = None,
    provider_status: str | None = None,
    occurred_at: datetime | None,
    provider_timestamp: str,
    metadata: dict[str, Any] | None = None,
    inbound: bool | None = None,
    test: bool | None = None,
    lookup: bool | None = None,
    reachable: bool | None = None,
    carrier: str | None = None,
    number_type: str | None = None,
    segments: int | None = None,
) -> dict[str, Any]:
    """The expected normalized fields of one sample (provider and channel added later)."""
    return {
        "type": type,
        "provider_type": provider_type,
        "message_id": message_id,
        "source": source,
        "destination": destination,
        "text": text,
        "status": status,
        "provider_status": provider_status,
        "occurred_at": occurred_at,
        "provider_timestamp": provider_timestamp,
        "metadata": metadata if metadata is not None else {},
        "inbound": inbound,
        "test": test,
        "lookup": lookup,
        "reachable": reachable,
        "carrier": carrier,
        "number_type": number_type,
        "segments": segments,
    }


ONEPOINT_SAMPLES: dict[str, dict[str, Any]] = {
    "receipt_sent.json": want(
        type=EventType.receipt,
        provider_type="Receipt",
        message_id="MS1312312312323",
        source="OPGDemo",
        destination="447700900123",
        text=APPT,
        status="sent",
        provider_status="sent",
        occurred_at=datetime(2024, 3, 5, 14, 22, 31, 645773, tzinfo=UTC),
        provider_timestamp="2024-03-05T14:22:31.645773+00:00",
        metadata={
            "RequestID": "REQ7F3A9C21D0E4",
            "OrgID": 1010,
            "Instance": "ETRERT",
            "Campaign": 1243,
            "TimeStamp": "2024-03-05T14:22:30.102938+00:00",
        },
        inbound=False,
        test=False,
        lookup=True,
        reachable=True,
        carrier="EE",
        number_type="mobile",
        segments=1,
    ),
    "receipt_delivered.json": want(
        type=EventType.receipt,
        provider_type="Receipt",
        message_id="MS1312312312323",
        source="OPGDemo",
        destination="447700900123",
        text=APPT,
        status="delivered",
        provider_status="delivered",
        occurred_at=datetime(2024, 3, 5, 14, 22, 36, 18442, tzinfo=UTC),
        provider_timestamp="2024-03-05T14:22:36.018442+00:00",
        metadata={"RequestID": "REQ7F3A9C21D0E4", "OrgID": 1010, "Campaign": 1243},
        inbound=False,
        test=False,
        lookup=True,
        reachable=True,
        carrier="EE",
        number_type="mobile",
    ),
    "receipt_failed.json": want(
        type=EventType.receipt,
        provider_type="Receipt",
        message_id="MS1312312312407",
        source="447860012345",
        destination="447700900456",
        text="Hi Sam, your parcel KX-55120 is out for delivery today between 1pm and 3pm.",
        status="failed",
        provider_status="Failed",
        occurred_at=datetime(2024, 6, 12, 9, 15, 2, 118204, tzinfo=BST),
        provider_timestamp="2024-06-12T09:15:02.118204+01:00",
        metadata={"RequestID": "REQ0B44E1A97C2F", "OrgID": 1010},
        inbound=False,
        test=False,
        lookup=False,
        reachable=False,
        carrier="Vodafone UK",
        number_type="mobile",
    ),
    "receipt_failure.json": want(
        type=EventType.receipt,
        provider_type="Receipt",
        message_id="MS1312312312511",
        source="OPGDemo",
        destination="353871234567",
        text="Your verification code is 482913",
        status="failed",
        provider_status="Failure",
        occurred_at=datetime(2024, 6, 12, 8, 1, 44, 907310, tzinfo=UTC),
        provider_timestamp="2024-06-12T08:01:44.907310+00:00",
        metadata={"OrgID": 1010, "Campaign": 1301},
        inbound=False,
        test=False,
        lookup=False,
        reachable=True,
        carrier="Three Ireland",
        number_type="mobile",
    ),
    "receipt_lowercase_type.json": want(
        type=EventType.receipt,
        provider_type="receipt",
        message_id="MS1312312312323",
        source="447700900789",
        destination="447860012345",
        text="Thanks, see you then",
        status="sent",
        provider_status="sent",
        occurred_at=datetime(2020, 2, 4, 11, 47, 33, 645773, tzinfo=UTC),
        provider_timestamp="2020-02-04T11:47:33.645773+00:00",
        metadata={
            "RequestID": "1234567890DEFED",
            "OrgID": 1010,
            "Instance": "ETRERT",
            "Campaign": 1242,
            "TimeStamp": "2020-02-04T11:47:33.645773+00:00",
        },
        inbound=True,
        test=False,
        lookup=True,
        reachable=True,
        carrier="EE",
        number_type="mobile",
    ),
    "receipt_timedout.json": want(
        type=EventType.receipt,
        provider_type="Receipt",
        message_id="MS1312312312688",
        source="OPGDemo",
        destination="61412345678",
        text="Reminder: your survey closes tonight at midnight.",
        status="timed_out",
        provider_status="Timedout",
        occurred_at=datetime(2024, 7, 1, 22, 5, 9, 417, tzinfo=AEST),
        provider_timestamp="2024-07-01T22:05:09.000417+10:00",
        metadata={"OrgID": 1010},
        inbound=False,
        test=False,
        lookup=False,
        reachable=True,
        carrier="Telstra",
        number_type="mobile",
    ),
    "receipt_landline_unknown.json": want(
        type=EventType.receipt,
        provider_type="Receipt",
        message_id="MS1312312312702",
        source="OPGDemo",
        destination="442079460018",
        text="Your table for 4 at 19:30 is booked.",
        status="landline_unknown",
        provider_status="LandlineUnknown",
        occurred_at=datetime(2024, 3, 6, 10, 0, 12, 250001, tzinfo=UTC),
        provider_timestamp="2024-03-06T10:00:12.250001+00:00",
        metadata={},
        inbound=False,
        test=False,
        lookup=True,
        reachable=False,
        carrier="BT",
        number_type="landline",
    ),
    "receipt_no_route.json": want(
        type=EventType.receipt,
        provider_type="Receipt",
        message_id="MS1312312312715",
        source="OPGDemo",
        destination="4915112345678",
        text="Ihr Termin ist bestätigt.",
        status="no_route",
        provider_status="NoRoute",
        occurred_at=datetime(2024, 3, 6, 11, 30, 0, 500000, tzinfo=CET),
        provider_timestamp="2024-03-06T11:30:00.500000+01:00",
        inbound=False,
        test=False,
        lookup=False,
        reachable=False,
        carrier="Unknown",
        number_type="unknown",
    ),
    "receipt_unknown_status.json": want(
        type=EventType.receipt,
        provider_type="Receipt",
        message_id="MS1312312312324",
        source="OPGDemo",
        destination="447700900123",
        text=APPT,
        status="accepted",
        provider_status="Accepted",
        occurred_at=datetime(2024, 3, 5, 14, 22, 31, 700000, tzinfo=UTC),
        provider_timestamp="2024-03-05T14:22:31.700000+00:00",
        carrier="EE",
        number_type="mobile",
    ),
    "lookup.json": want(
        type=EventType.lookup,
        provider_type="Lookup",
        message_id="MS1312312312800",
        source="OPGDemo",
        destination="441632960961",
        text="Your prescription is ready to collect.",
        status="failed",
        provider_status="Failed",
        occurred_at=datetime(2024, 4, 2, 16, 45, 10, 333333, tzinfo=BST),
        provider_timestamp="2024-04-02T16:45:10.333333+01:00",
        metadata={"OrgID": 1010, "Campaign": 1288},
        inbound=False,
        test=False,
        lookup=True,
        reachable=False,
        carrier="BT",
        number_type="landline",
    ),
    "message_inbound.json": want(
        type=EventType.message,
        provider_type="Message",
        message_id="MS1312312312323",
        source="447700900123",
        destination="447860012345",
        text=REPLY,
        occurred_at=datetime(2024, 3, 5, 15, 2, 47, 881920, tzinfo=UTC),
        provider_timestamp="2024-03-05T15:02:47.881920+00:00",
        metadata={"RequestID": "REQ7F3A9C21D0E4", "OrgID": 1010},
        inbound=True,
        test=False,
        lookup=False,
        reachable=True,
        carrier="EE",
        number_type="mobile",
        segments=2,
    ),
    "info.json": want(
        type=EventType.info,
        provider_type="Info",
        message_id="MS1312312312901",
        source="447700900654",
        destination="60777",
        text="INFO",
        occurred_at=datetime(2024, 3, 5, 15, 10, 0, 10203, tzinfo=UTC),
        provider_timestamp="2024-03-05T15:10:00.010203+00:00",
        metadata={"OrgID": 1010},
        inbound=True,
        test=False,
        lookup=False,
        reachable=True,
        carrier="O2",
        number_type="mobile",
    ),
    "help.json": want(
        type=EventType.help,
        provider_type="Help",
        message_id="MS1312312312902",
        source="447700900654",
        destination="60777",
        text="help",
        occurred_at=datetime(2024, 3, 5, 15, 11, 30, 405060, tzinfo=UTC),
        provider_timestamp="2024-03-05T15:11:30.405060+00:00",
        metadata={"OrgID": 1010},
        inbound=True,
        test=False,
        lookup=False,
        reachable=True,
        carrier="O2",
        number_type="mobile",
    ),
    "stop.json": want(
        type=EventType.stop,
        provider_type="Stop",
        message_id="MS1312312312903",
        source="447700900654",
        destination="60777",
        text="STOP",
        occurred_at=datetime(2024, 3, 5, 15, 12, 59, 999999, tzinfo=UTC),
        provider_timestamp="2024-03-05T15:12:59.999999+00:00",
        metadata={"OrgID": 1010},
        inbound=True,
        test=False,
        lookup=False,
        reachable=True,
        carrier="O2",
        number_type="mobile",
    ),
    "keyword.json": want(
        type=EventType.keyword,
        provider_type="Keyword",
        message_id="MS1312312312904",
        source="447700900654",
        destination="60777",
        text="JOIN SPRING24",
        occurred_at=datetime(2024, 3, 5, 15, 14, 21, 123456, tzinfo=UTC),
        provider_timestamp="2024-03-05T15:14:21.123456+00:00",
        metadata={"OrgID": 1010},
        inbound=True,
        test=False,
        lookup=False,
        reachable=True,
        carrier="O2",
        number_type="mobile",
    ),
    "click.json": want(
        type=EventType.click,
        provider_type="Click",
        message_id="MS1312312312323",
        source="OPGDemo",
        destination="447700900123",
        text="https://opg.li/k7Qx2",
        occurred_at=datetime(2024, 3, 5, 16, 40, 5, 770001, tzinfo=UTC),
        provider_timestamp="2024-03-05T16:40:05.770001+00:00",
        metadata={"RequestID": "REQ7F3A9C21D0E4", "Link": "survey"},
        inbound=False,
        test=False,
        carrier="EE",
        number_type="mobile",
    ),
    "unknown_type.json": want(
        type=EventType.unknown,
        provider_type="Bounce",
        message_id="MS1312312312950",
        source="OPGDemo",
        destination="447700900999",
        text=APPT,
        status="bounced",
        provider_status="Bounced",
        occurred_at=datetime(2024, 3, 5, 14, 30, 0, 1, tzinfo=UTC),
        provider_timestamp="2024-03-05T14:30:00.000001+00:00",
        carrier="EE",
        number_type="mobile",
    ),
    "bad_timestamp.json": want(
        type=EventType.receipt,
        provider_type="Receipt",
        message_id="MS1312312312325",
        source="OPGDemo",
        destination="447700900123",
        text=APPT,
        status="delivered",
        provider_status="delivered",
        occurred_at=None,
        provider_timestamp="05/03/2024 14:22:31",
    ),
    "case_insensitive_keys.json": want(
        type=EventType.receipt,
        provider_type="Receipt",
        message_id="MS1312312312999",
        source="OPGDemo",
        destination="447700900111",
        text="Your code is 771204",
        status="delivered",
        provider_status="Delivered",
        occurred_at=datetime(2024, 3, 7, 7, 7, 7, 70707, tzinfo=UTC),
        provider_timestamp="2024-03-07T07:07:07.070707+00:00",
        metadata={"OrgID": 1010},
        inbound=False,
        test=True,
        lookup=False,
        reachable=True,
        carrier="O2",
        number_type="mobile",
        segments=1,
    ),
}

DIY_SAMPLES: dict[str, dict[str, Any]] = {
    "receipt_delivered.json": want(
        type=EventType.receipt,
        provider_type="Receipt",
        message_id="MS1312312313001",
        source="DIYSurveys",
        destination="447700900321",
        text=SURVEY,
        status="delivered",
        provider_status="delivered",
        occurred_at=datetime(2024, 5, 20, 12, 0, 3, 456789, tzinfo=BST),
        provider_timestamp="2024-05-20T12:00:03.456789+01:00",
        metadata={"SurveyID": "SV-88213", "OrgID": 2020},
        inbound=False,
        test=False,
        lookup=False,
        reachable=True,
        carrier="Vodafone UK",
        number_type="mobile",
    ),
    "receipt_failed.form": want(
        type=EventType.receipt,
        provider_type="Receipt",
        message_id="MS1312312313002",
        source="DIYSurveys",
        destination="447700900322",
        text=SURVEY,
        status="failed",
        provider_status="Failed",
        occurred_at=datetime(2024, 5, 20, 12, 0, 9, 123, tzinfo=BST),
        provider_timestamp="2024-05-20T12:00:09.000123+01:00",
        metadata={"SurveyID": "SV-88213", "Wave": 3, "OrgID": 2020},
        inbound=False,
        test=False,
        lookup=True,
        reachable=True,
        carrier="Vodafone UK",
        number_type="mobile",
        segments=2,
    ),
    "lookups.json": want(
        type=EventType.lookup,
        provider_type="Lookups",
        message_id="MS1312312313003",
        source="DIYSurveys",
        destination="441134960000",
        text=SURVEY,
        status="landline_unknown",
        provider_status="LandlineUnknown",
        occurred_at=datetime(2024, 5, 20, 12, 0, 1, 1, tzinfo=BST),
        provider_timestamp="2024-05-20T12:00:01.000001+01:00",
        metadata={"SurveyID": "SV-88213"},
        inbound=False,
        test=False,
        lookup=True,
        reachable=False,
        carrier="Virgin Media",
        number_type="landline",
    ),
    "message_inbound.form": want(
        type=EventType.message,
        provider_type="Message",
        message_id="MS1312312313001",
        source="447700900321",
        destination="447537410000",
        text="Yes, 2pm works. Can I bring my +1? 10/10 service & friendly staff",
        occurred_at=datetime(2024, 5, 20, 12, 34, 56, 789012, tzinfo=BST),
        provider_timestamp="2024-05-20T12:34:56.789012+01:00",
        metadata={"SurveyID": "SV-88213", "Wave": 3, "OrgID": 2020},
        inbound=True,
        test=False,
        lookup=False,
        reachable=True,
        carrier="Vodafone UK",
        number_type="mobile",
        segments=1,
    ),
    "message_inbound.query": want(
        type=EventType.message,
        provider_type="Message",
        message_id="MS1312312313004",
        source="447700900987",
        destination="447537410000",
        text="Running 10 mins late + parking is full, sorry!",
        occurred_at=datetime(2024, 5, 21, 8, 59, 1, 250000, tzinfo=BST),
        provider_timestamp="2024-05-21T08:59:01.250000+01:00",
        inbound=True,
        test=False,
        lookup=False,
        reachable=True,
        carrier="Three UK",
        number_type="mobile",
    ),
    "info.json": want(
        type=EventType.info,
        provider_type="Info",
        message_id="MS1312312313005",
        source="447700900987",
        destination="60777",
        text="Info",
        occurred_at=datetime(2024, 5, 21, 9, 0, 0, 100, tzinfo=BST),
        provider_timestamp="2024-05-21T09:00:00.000100+01:00",
        inbound=True,
        carrier="Three UK",
        number_type="mobile",
    ),
    "help.form": want(
        type=EventType.help,
        provider_type="Help",
        message_id="MS1312312313006",
        source="447700900988",
        destination="60777",
        text="HELP",
        occurred_at=datetime(2024, 5, 21, 9, 1, 0, 200, tzinfo=BST),
        provider_timestamp="2024-05-21T09:01:00.000200+01:00",
        inbound=True,
        test=False,
        carrier="EE",
        number_type="mobile",
    ),
    "stop.query": want(
        type=EventType.stop,
        provider_type="Stop",
        message_id="MS1312312313007",
        source="447700900989",
        destination="60777",
        text="Stop all",
        occurred_at=datetime(2024, 5, 21, 9, 2, 0, 300, tzinfo=BST),
        provider_timestamp="2024-05-21T09:02:00.000300+01:00",
        inbound=True,
        carrier="O2",
        number_type="mobile",
    ),
    "unstop.json": want(
        type=EventType.unstop,
        provider_type="Unstop",
        message_id="MS1312312313007",
        source="447700900989",
        destination="60777",
        text="UNSTOP",
        occurred_at=datetime(2024, 5, 22, 18, 45, 30, 600000, tzinfo=BST),
        provider_timestamp="2024-05-22T18:45:30.600000+01:00",
        metadata={"OrgID": 2020},
        inbound=True,
        test=False,
        lookup=False,
        reachable=True,
        carrier="O2",
        number_type="mobile",
    ),
    "keyword.form": want(
        type=EventType.keyword,
        provider_type="Keyword",
        message_id="MS1312312313008",
        source="447700900990",
        destination="60777",
        text="FEEDBACK 5 stars",
        occurred_at=datetime(2024, 5, 22, 19, 0, 0, 123000, tzinfo=BST),
        provider_timestamp="2024-05-22T19:00:00.123000+01:00",
        metadata={"SurveyID": "SV-90001", "Keyword": "FEEDBACK"},
        inbound=True,
        test=False,
        lookup=False,
        reachable=True,
        carrier="giffgaff",
        number_type="mobile",
    ),
    "click.query": want(
        type=EventType.click,
        provider_type="Click",
        message_id="MS1312312313001",
        source="DIYSurveys",
        destination="447700900321",
        text="https://diy.li/s/Q9x4Rt",
        occurred_at=datetime(2024, 5, 20, 12, 5, 17, 414141, tzinfo=BST),
        provider_timestamp="2024-05-20T12:05:17.414141+01:00",
        inbound=False,
        carrier="Vodafone UK",
        number_type="mobile",
    ),
    "killed.json": want(
        type=EventType.killed,
        provider_type="Killed",
        message_id="MS1312312313101",
        source="DIYSurveys",
        destination="447700900401",
        text=SURVEY,
        status="killed",
        provider_status="Killed",
        occurred_at=datetime(2024, 5, 23, 7, 30, 0, 1, tzinfo=UTC),
        provider_timestamp="2024-05-23T07:30:00.000001+00:00",
        metadata={"SurveyID": "SV-88213"},
        inbound=False,
        test=False,
    ),
    "notkilled.json": want(
        type=EventType.not_killed,
        provider_type="NotKilled",
        message_id="MS1312312313102",
        source="DIYSurveys",
        destination="447700900402",
        text=SURVEY,
        status="not_killed",
        provider_status="Notkilled",
        occurred_at=datetime(2024, 5, 23, 7, 30, 1, 2, tzinfo=UTC),
        provider_timestamp="2024-05-23T07:30:01.000002+00:00",
        inbound=False,
        test=False,
    ),
    "not_killed_spaced.form": want(
        type=EventType.not_killed,
        provider_type="Not Killed",
        message_id="MS1312312313103",
        source="DIYSurveys",
        destination="447700900403",
        text=SURVEY,
        status="not_killed",
        provider_status="Notkilled",
        occurred_at=datetime(2024, 5, 23, 7, 30, 2, 3, tzinfo=UTC),
        provider_timestamp="2024-05-23T07:30:02.000003+00:00",
        inbound=False,
        test=False,
    ),
    "notkilled_lower.query": want(
        type=EventType.not_killed,
        provider_type="Notkilled",
        message_id="MS1312312313104",
        source="DIYSurveys",
        destination="447700900404",
        status="not_killed",
        provider_status="Notkilled",
        occurred_at=datetime(2024, 5, 23, 7, 30, 3, 4, tzinfo=UTC),
        provider_timestamp="2024-05-23T07:30:03.000004+00:00",
    ),
    "onstop.json": want(
        type=EventType.on_stop,
        provider_type="OnStop",
        message_id="MS1312312313201",
        source="DIYSurveys",
        destination="447700900989",
        text=SURVEY,
        status="failed",
        provider_status="Failed",
        occurred_at=datetime(2024, 5, 23, 8, 0, 0, 500000, tzinfo=BST),
        provider_timestamp="2024-05-23T08:00:00.500000+01:00",
        inbound=False,
        test=False,
        carrier="O2",
        number_type="mobile",
    ),
    "on_stop_spaced.form": want(
        type=EventType.on_stop,
        provider_type="On Stop",
        message_id="MS1312312313202",
        source="DIYSurveys",
        destination="447700900989",
        text=SURVEY,
        status="failed",
        provider_status="Failed",
        occurred_at=datetime(2024, 5, 23, 8, 0, 1, 600000, tzinfo=BST),
        provider_timestamp="2024-05-23T08:00:01.600000+01:00",
        metadata={"SurveyID": "SV-88213", "Wave": 3},
        inbound=False,
    ),
    "routingfailure.json": want(
        type=EventType.routing_failure,
        provider_type="RoutingFailure",
        message_id="MS1312312313301",
        source="DIYSurveys",
        destination="8613800138000",
        text=SURVEY,
        status="no_route",
        provider_status="NoRoute",
        occurred_at=datetime(2024, 5, 24, 10, 10, 10, 101010, tzinfo=CST),
        provider_timestamp="2024-05-24T10:10:10.101010+08:00",
        inbound=False,
        test=False,
        carrier="Unknown",
        number_type="unknown",
    ),
    "routing_failure_spaced.query": want(
        type=EventType.routing_failure,
        provider_type="Routing Failure",
        message_id="MS1312312313302",
        source="DIYSurveys",
        destination="8613800138001",
        status="no_route",
        provider_status="NoRoute",
        occurred_at=datetime(2024, 5, 24, 10, 10, 11, 202020, tzinfo=CST),
        provider_timestamp="2024-05-24T10:10:11.202020+08:00",
        test=False,
    ),
    "timedout.json": want(
        type=EventType.timed_out,
        provider_type="TimedOut",
        message_id="MS1312312313401",
        source="DIYSurveys",
        destination="447700900501",
        text=SURVEY,
        status="timed_out",
        provider_status="Timedout",
        occurred_at=datetime(2024, 5, 25, 23, 59, 59, 999999, tzinfo=BST),
        provider_timestamp="2024-05-25T23:59:59.999999+01:00",
        inbound=False,
        test=False,
    ),
    "timed_out_spaced.form": want(
        type=EventType.timed_out,
        provider_type="Timed Out",
        message_id="MS1312312313402",
        source="DIYSurveys",
        destination="447700900502",
        text=SURVEY,
        status="timed_out",
        provider_status="Timedout",
        occurred_at=datetime(2024, 5, 26, 0, 0, 0, 1, tzinfo=BST),
        provider_timestamp="2024-05-26T00:00:00.000001+01:00",
        inbound=False,
        test=False,
        lookup=False,
        reachable=True,
        segments=1,
    ),
    "unknown_type.query": want(
        type=EventType.unknown,
        provider_type="Bounce",
        message_id="MS1312312313501",
        source="DIYSurveys",
        destination="447700900601",
        status="bounced",
        provider_status="Bounced",
        occurred_at=datetime(2024, 5, 27, 6, 0, 0, 0, tzinfo=BST),
        provider_timestamp="2024-05-27T06:00:00.000000+01:00",
    ),
}

SAMPLES: dict[str, dict[str, dict[str, Any]]] = {"onepoint": ONEPOINT_SAMPLES, "diy": DIY_SAMPLES}


def parse_sample(
    provider_name: str, name: str, *, sniff: bool = False, channel: str = CHANNEL
) -> tuple[Event, bytes]:
    """Parse one stored sample the way it arrives; return the event and the expected raw."""
    data = payload(provider_name, name)
    provider = PROVIDERS[provider_name]
    if name.endswith(".query"):
        query = data.decode("ascii")
        return provider.parse(b"", query=query, channel=channel), query.encode()
    content_type = None if sniff else (JSON if name.endswith(".json") else FORM)
    return provider.parse(data, content_type=content_type, channel=channel), data


def normalized(event: Event) -> dict[str, Any]:
    return {name: getattr(event, name) for name in FIELDS}


def expected(provider_name: str, name: str, channel: str = CHANNEL) -> dict[str, Any]:
    return {**SAMPLES[provider_name][name], "provider": provider_name, "channel": channel}


def check_sample(provider_name: str, name: str, *, sniff: bool = False) -> Event:
    event, raw = parse_sample(provider_name, name, sniff=sniff)
    assert normalized(event) == expected(provider_name, name)
    assert event.raw == raw
    assert isinstance(event.type, EventType)
    if event.occurred_at is not None:
        assert event.occurred_at.tzinfo is not None
        assert event.occurred_at.utcoffset() is not None
    return event


def json_body(**fields: Any) -> bytes:
    """A compact OnePoint JSON body with the given fields (insertion order kept)."""
    return json.dumps(fields).encode()


# --------------------------------------------------------------------------- samples


def test_onepoint_every_sample_file_has_expectations() -> None:
    for provider_name, table in SAMPLES.items():
        files = {p.name for p in (PAYLOADS / provider_name).iterdir() if p.is_file()}
        assert files == set(table), provider_name


@pytest.mark.parametrize("name", sorted(ONEPOINT_SAMPLES))
def test_onepoint_sample_normalizes_every_field(name: str) -> None:
    check_sample("onepoint", name)


@pytest.mark.parametrize("name", sorted(DIY_SAMPLES))
def test_diy_sample_normalizes_every_field(name: str) -> None:
    check_sample("diy", name)


@pytest.mark.parametrize("name", sorted(n for n in ONEPOINT_SAMPLES if n.endswith(".json")))
def test_onepoint_sample_sniffed_without_content_type(name: str) -> None:
    check_sample("onepoint", name, sniff=True)


@pytest.mark.parametrize("name", sorted(n for n in DIY_SAMPLES if not n.endswith(".query")))
def test_diy_sample_sniffed_without_content_type(name: str) -> None:
    check_sample("diy", name, sniff=True)


@pytest.mark.parametrize("name", sorted(ONEPOINT_SAMPLES))
def test_onepoint_sample_parsed_by_diy_is_provider_diy(name: str) -> None:
    data = payload("onepoint", name)
    event = DIY.parse(data, content_type=JSON, channel="diy-hook")
    assert event.provider == "diy"
    assert event.channel == "diy-hook"
    assert normalized(event) == {
        **expected("onepoint", name),
        "provider": "diy",
        "channel": "diy-hook",
    }


@pytest.mark.parametrize("name", sorted(DIY_SAMPLES))
def test_diy_sample_parsed_by_onepoint_is_provider_onepoint(name: str) -> None:
    data = payload("diy", name)
    if name.endswith(".query"):
        event = ONEPOINT.parse(b"", query=data.decode("ascii"))
    else:
        event = ONEPOINT.parse(data)
    assert event.provider == "onepoint"
    assert event.channel == ""
    assert normalized(event) == {**expected("diy", name), "provider": "onepoint", "channel": ""}


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("spelling", "event_type"),
    [
        ("Receipt", EventType.receipt),
        ("receipt", EventType.receipt),
        ("Lookup", EventType.lookup),
        ("Lookups", EventType.lookup),
        ("Message", EventType.message),
        ("Info", EventType.info),
        ("Help", EventType.help),
        ("Stop", EventType.stop),
        ("Unstop", EventType.unstop),
        ("Keyword", EventType.keyword),
        ("Click", EventType.click),
        ("Killed", EventType.killed),
        ("NotKilled", EventType.not_killed),
        ("Not Killed", EventType.not_killed),
        ("Notkilled", EventType.not_killed),
        ("OnStop", EventType.on_stop),
        ("On Stop", EventType.on_stop),
        ("RoutingFailure", EventType.routing_failure),
        ("Routing Failure", EventType.routing_failure),
        ("TimedOut", EventType.timed_out),
        ("Timed Out", EventType.timed_out),
        ("Bounce", EventType.unknown),
    ],
)
def test_onepoint_type_spellings(spelling: str, event_type: EventType) -> None:
    body = json_body(
        Type=spelling, MessageID="MS1312312312323", Source="OPGDemo", Destination="447700900123"
    )
    for provider in (ONEPOINT, DIY):
        event = provider.parse(body, content_type=JSON)
        assert event.type is event_type
        assert event.provider_type == spelling
        assert event.provider == provider.name
    query = f"Type={spelling.replace(' ', '+')}&MessageID=MS1312312312323"
    event = DIY.parse(b"", query=query)
    assert event.type is event_type
    assert event.provider_type == spelling


def test_onepoint_unknown_type_is_kept_not_rejected() -> None:
    event, _ = parse_sample("onepoint", "unknown_type.json")
    assert event.type is EventType.unknown
    assert event.provider_type == "Bounce"
    assert event.message_id == "MS1312312312950"
    assert event.status == "bounced"
    assert event.type.is_response_type is False


def test_diy_unknown_type_in_query_is_kept_not_rejected() -> None:
    event, raw = parse_sample("diy", "unknown_type.query")
    assert event.type is EventType.unknown
    assert event.provider_type == "Bounce"
    assert event.provider == "diy"
    assert event.raw == raw


def test_onepoint_missing_type_is_unknown() -> None:
    event = ONEPOINT.parse(json_body(MessageID="MS1312312312323", Status="delivered"))
    assert event.type is EventType.unknown
    assert event.provider_type is None
    assert event.status == "delivered"


@pytest.mark.parametrize("event_type", list(EventType))
def test_onepoint_is_response_type_only_message_and_keyword(event_type: EventType) -> None:
    assert event_type.is_response_type is (event_type.value in {"message", "keyword"})


@pytest.mark.parametrize(
    ("provider_name", "name"),
    [(p, n) for p, table in SAMPLES.items() for n in sorted(table)],
)
def test_onepoint_parsed_response_types(provider_name: str, name: str) -> None:
    event, _ = parse_sample(provider_name, name)
    assert event.type.is_response_type is (event.type in (EventType.message, EventType.keyword))
    if name.startswith(("message_inbound", "keyword")):
        assert event.type.is_response_type is True


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("raw_status", "status"),
    [
        ("sent", "sent"),
        ("delivered", "delivered"),
        ("Delivered", "delivered"),
        ("Failed", "failed"),
        ("Failure", "failed"),
        ("Timedout", "timed_out"),
        ("Notkilled", "not_killed"),
        ("LandlineUnknown", "landline_unknown"),
        ("NoRoute", "no_route"),
        ("Accepted", "accepted"),
        ("Bounced", "bounced"),
        ("Killed", "killed"),
    ],
)
def test_onepoint_status_normalized(raw_status: str, status: str) -> None:
    body = json_body(Type="Receipt", MessageID="MS1312312312323", Status=raw_status)
    event = ONEPOINT.parse(body, content_type=JSON)
    assert event.status == status
    assert event.provider_status == raw_status
    form = f"Type=Receipt&MessageID=MS1312312312323&Status={raw_status}".encode()
    event = DIY.parse(form, content_type=FORM)
    assert event.status == status
    assert event.provider_status == raw_status


@pytest.mark.parametrize(
    ("name", "status", "raw_status"),
    [
        ("receipt_sent.json", "sent", "sent"),
        ("receipt_delivered.json", "delivered", "delivered"),
        ("receipt_failed.json", "failed", "Failed"),
        ("receipt_failure.json", "failed", "Failure"),
        ("receipt_timedout.json", "timed_out", "Timedout"),
        ("receipt_landline_unknown.json", "landline_unknown", "LandlineUnknown"),
        ("receipt_no_route.json", "no_route", "NoRoute"),
        ("receipt_unknown_status.json", "accepted", "Accepted"),
    ],
)
def test_onepoint_receipt_status_samples(name: str, status: str, raw_status: str) -> None:
    event, _ = parse_sample("onepoint", name)
    assert event.type is EventType.receipt
    assert event.status == status
    assert event.provider_status == raw_status


def test_diy_notkilled_status_from_form_and_query() -> None:
    form_event, _ = parse_sample("diy", "not_killed_spaced.form")
    query_event, _ = parse_sample("diy", "notkilled_lower.query")
    for event in (form_event, query_event):
        assert event.type is EventType.not_killed
        assert event.status == "not_killed"
        assert event.provider_status == "Notkilled"


def test_onepoint_absent_status_is_none() -> None:
    event, _ = parse_sample("onepoint", "message_inbound.json")
    assert event.status is None
    assert event.provider_status is None


# --------------------------------------------------------------------------- timestamps


def test_onepoint_timestamp_with_offset_and_microseconds() -> None:
    event, _ = parse_sample("onepoint", "receipt_timedout.json")
    assert event.occurred_at == datetime(2024, 7, 1, 12, 5, 9, 417, tzinfo=UTC)
    assert event.occurred_at is not None
    assert event.occurred_at.tzinfo is not None
    assert event.occurred_at.microsecond == 417
    assert event.provider_timestamp == "2024-07-01T22:05:09.000417+10:00"


def test_diy_form_timestamp_with_encoded_plus_offset() -> None:
    event, raw = parse_sample("diy", "receipt_failed.form")
    assert b"%2B01%3A00" in raw
    assert event.occurred_at == datetime(2024, 5, 20, 11, 0, 9, 123, tzinfo=UTC)
    assert event.provider_timestamp == "2024-05-20T12:00:09.000123+01:00"


def test_onepoint_unparseable_timestamp_kept_raw() -> None:
    event, _ = parse_sample("onepoint", "bad_timestamp.json")
    assert event.occurred_at is None
    assert event.provider_timestamp == "05/03/2024 14:22:31"
    assert event.type is EventType.receipt
    assert event.status == "delivered"


def test_diy_unparseable_timestamp_in_query_kept_raw() -> None:
    event = DIY.parse(b"", query="Type=Receipt&MessageID=MS1312312313001&Timestamp=yesterday")
    assert event.occurred_at is None
    assert event.provider_timestamp == "yesterday"
    assert event.type is EventType.receipt


# --------------------------------------------------------------------------- metadata


def test_onepoint_metadata_list_merged_last_key_wins() -> None:
    event, raw = parse_sample("onepoint", "receipt_sent.json")
    assert raw.count(b'"Campaign"') == 2
    assert event.metadata == {
        "RequestID": "REQ7F3A9C21D0E4",
        "OrgID": 1010,
        "Instance": "ETRERT",
        "Campaign": 1243,
        "TimeStamp": "2024-03-05T14:22:30.102938+00:00",
    }


def test_onepoint_metadata_plain_object() -> None:
    event, _ = parse_sample("onepoint", "receipt_delivered.json")
    assert event.metadata == {"RequestID": "REQ7F3A9C21D0E4", "OrgID": 1010, "Campaign": 1243}


def test_onepoint_metadata_empty_list_and_absent() -> None:
    empty, _ = parse_sample("onepoint", "receipt_landline_unknown.json")
    absent, _ = parse_sample("onepoint", "receipt_no_route.json")
    assert empty.metadata == {}
    assert absent.metadata == {}


def test_diy_form_metadata_json_string_list_last_key_wins() -> None:
    event, raw = parse_sample("diy", "receipt_failed.form")
    assert b"MetaData=%5B" in raw
    assert event.metadata == {"SurveyID": "SV-88213", "Wave": 3, "OrgID": 2020}


def test_diy_form_metadata_json_string_object() -> None:
    event, _ = parse_sample("diy", "on_stop_spaced.form")
    assert event.metadata == {"SurveyID": "SV-88213", "Wave": 3}


# --------------------------------------------------------------------------- booleans, numbers


def test_diy_form_booleans_from_strings() -> None:
    event, _ = parse_sample("diy", "receipt_failed.form")
    assert event.inbound is False  # "false"
    assert event.lookup is True  # "1"
    assert event.test is False  # "0"
    assert event.reachable is True  # "True"


def test_diy_form_inbound_true_lookup_false() -> None:
    event, _ = parse_sample("diy", "message_inbound.form")
    assert event.inbound is True  # "true"
    assert event.lookup is False  # "false"
    assert event.test is False  # "0"
    assert event.reachable is True  # "True"


def test_diy_query_booleans_from_strings() -> None:
    event, _ = parse_sample("diy", "message_inbound.query")
    assert event.inbound is True  # "true"
    assert event.test is False  # "false"
    assert event.lookup is False  # "0"
    assert event.reachable is True  # "1"


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("true", True), ("True", True), ("1", True), ("false", False), ("False", False), ("0", False)],
)
def test_diy_form_boolean_spellings(value: str, parsed: bool) -> None:
    body = (
        f"Type=Message&MessageID=MS1312312313001&Inbound={value}&Test={value}"
        f"&Lookup={value}&Reachable={value}"
    ).encode()
    event = DIY.parse(body, content_type=FORM)
    assert (event.inbound, event.test, event.lookup, event.reachable) == (parsed,) * 4
    event = DIY.parse(b"", query=body.decode())
    assert (event.inbound, event.test, event.lookup, event.reachable) == (parsed,) * 4


def test_onepoint_json_booleans() -> None:
    event, _ = parse_sample("onepoint", "case_insensitive_keys.json")
    assert event.inbound is False
    assert event.lookup is False
    assert event.test is True
    assert event.reachable is True


def test_onepoint_segments_int() -> None:
    event, _ = parse_sample("onepoint", "message_inbound.json")
    assert event.segments == 2
    assert isinstance(event.segments, int)


def test_diy_form_segments_int_from_string() -> None:
    event, raw = parse_sample("diy", "receipt_failed.form")
    assert b"Segments=2" in raw
    assert event.segments == 2
    assert isinstance(event.segments, int)


def test_onepoint_segments_absent_is_none() -> None:
    event, _ = parse_sample("onepoint", "receipt_delivered.json")
    assert event.segments is None


@pytest.mark.parametrize(
    ("raw_type", "number_type"),
    [("Mobile", "mobile"), ("Landline", "landline"), ("Unknown", "unknown"), ("MOBILE", "mobile")],
)
def test_onepoint_number_type_lowercase(raw_type: str, number_type: str) -> None:
    body = json_body(Type="Lookup", MessageID="MS1312312312800", NumberType=raw_type)
    assert ONEPOINT.parse(body, content_type=JSON).number_type == number_type


def test_onepoint_carrier_kept_as_sent() -> None:
    samples = {
        "receipt_failed.json": "Vodafone UK",
        "receipt_failure.json": "Three Ireland",
        "receipt_no_route.json": "Unknown",
        "receipt_landline_unknown.json": "BT",
    }
    for name, carrier in samples.items():
        event, _ = parse_sample("onepoint", name)
        assert event.carrier == carrier


# --------------------------------------------------------------------------- addresses, text


def test_onepoint_inbound_source_and_destination_kept_as_sent() -> None:
    event, _ = parse_sample("onepoint", "message_inbound.json")
    # Their docs: on inbound callbacks Source is the recipient of the original message.
    assert event.inbound is True
    assert event.source == "447700900123"
    assert event.destination == "447860012345"
    assert event.text == REPLY


def test_onepoint_click_text_is_tiny_url() -> None:
    event, _ = parse_sample("onepoint", "click.json")
    assert event.type is EventType.click
    assert event.text == "https://opg.li/k7Qx2"


def test_diy_query_click_url_percent_decoded() -> None:
    event, raw = parse_sample("diy", "click.query")
    assert b"https%3A%2F%2Fdiy.li%2Fs%2FQ9x4Rt" in raw
    assert event.text == "https://diy.li/s/Q9x4Rt"


def test_diy_query_message_plus_and_percent_decoding() -> None:
    event, raw = parse_sample("diy", "message_inbound.query")
    assert b"Running+10+mins+late+%2B+parking" in raw
    assert event.text == "Running 10 mins late + parking is full, sorry!"


def test_diy_form_message_plus_and_percent_decoding() -> None:
    event, _ = parse_sample("diy", "message_inbound.form")
    assert event.text == "Yes, 2pm works. Can I bring my +1? 10/10 service & friendly staff"


def test_onepoint_unicode_text_kept() -> None:
    event, _ = parse_sample("onepoint", "receipt_no_route.json")
    assert event.text == "Ihr Termin ist bestätigt."


def test_onepoint_numeric_ids_and_numbers_become_strings() -> None:
    body = (
        b'{"Type": "Receipt", "MessageID": 1312312312323, "Source": 60777, '
        b'"Destination": 447700900123, "Status": "sent"}'
    )
    event = ONEPOINT.parse(body, content_type=JSON)
    assert event.message_id == "1312312312323"
    assert event.source == "60777"
    assert event.destination == "447700900123"


# --------------------------------------------------------------------------- field names


def test_onepoint_field_names_case_insensitive_json() -> None:
    event, _ = parse_sample("onepoint", "case_insensitive_keys.json")
    assert event.type is EventType.receipt  # "TYPE"
    assert event.message_id == "MS1312312312999"  # "messageid"
    assert event.destination == "447700900111"  # "DESTINATION"
    assert event.status == "delivered"  # "STATUS"
    assert event.number_type == "mobile"  # "NUMBERTYPE": "MOBILE"
    assert event.metadata == {"OrgID": 1010}  # "metadata"
    assert event.segments == 1  # "segments"


def test_diy_field_names_case_insensitive_form_and_query() -> None:
    text = (
        "TYPE=Keyword&messageid=MS1312312313008&SOURCE=447700900990&destination=60777"
        "&MESSAGE=FEEDBACK+5&inbound=true&STATUS=Delivered&numbertype=Mobile&SEGMENTS=1"
    )
    for event in (DIY.parse(text.encode(), content_type=FORM), DIY.parse(b"", query=text)):
        assert event.type is EventType.keyword
        assert event.provider_type == "Keyword"
        assert event.message_id == "MS1312312313008"
        assert event.source == "447700900990"
        assert event.destination == "60777"
        assert event.text == "FEEDBACK 5"
        assert event.inbound is True
        assert event.status == "delivered"
        assert event.number_type == "mobile"
        assert event.segments == 1


# --------------------------------------------------------------------------- raw, channel, GET


def test_onepoint_raw_is_body_bytes_and_channel_copied() -> None:
    data = payload("onepoint", "receipt_sent.json")
    received = datetime(2024, 3, 5, 14, 22, 32, tzinfo=UTC)
    event = ONEPOINT.parse(
        data,
        content_type="application/json; charset=utf-8",
        channel="opg-main",
        received_at=received,
        event_id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    )
    assert event.raw == data
    assert event.channel == "opg-main"
    assert event.received_at == received
    assert event.id == "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    assert event.provider == "onepoint"


def test_onepoint_default_channel_and_generated_id() -> None:
    data = payload("onepoint", "receipt_delivered.json")
    first = ONEPOINT.parse(data)
    second = ONEPOINT.parse(data)
    assert first.channel == ""
    assert first.id != second.id
    assert first.received_at.tzinfo is not None


def test_diy_get_raw_is_encoded_query_string() -> None:
    query = payload("diy", "stop.query").decode("ascii")
    event = DIY.parse(b"", query=query, channel="diy-get")
    assert event.raw == query.encode()
    assert event.channel == "diy-get"
    assert event.provider == "diy"
    assert event.type is EventType.stop
    assert event.text == "Stop all"


def test_diy_get_with_content_type_and_blank_body() -> None:
    query = payload("diy", "click.query").decode("ascii")
    event = DIY.parse(b"", content_type=JSON, query=query)
    assert event.type is EventType.click
    assert event.raw == query.encode()


def test_diy_has_callback_fields() -> None:
    for name in ("message_inbound.query", "stop.query", "click.query", "unknown_type.query"):
        assert DIY.has_callback_fields(payload("diy", name).decode("ascii")) is True
    assert DIY.has_callback_fields("messageid=MS1312312313001") is True
    assert DIY.has_callback_fields("STATUS=delivered&auth=abc") is True


def test_diy_has_callback_fields_false_without_fields() -> None:
    assert DIY.has_callback_fields("") is False
    assert DIY.has_callback_fields("auth=abc") is False
    assert DIY.has_callback_fields("auth=abc&sig=9f86d081") is False


def test_onepoint_has_callback_fields() -> None:
    assert ONEPOINT.has_callback_fields("Type=Receipt&MessageID=MS1312312312323") is True
    assert ONEPOINT.has_callback_fields("") is False
    assert ONEPOINT.has_callback_fields("auth=abc") is False


def test_onepoint_form_body() -> None:
    body = (
        b"Type=Receipt&MessageID=MS1312312312323&Source=OPGDemo&Destination=447700900123"
        b"&Status=Failure&Timestamp=2024-03-05T14%3A22%3A31.645773%2B00%3A00&Inbound=false"
        b"&Carrier=EE&NumberType=Mobile&Segments=3"
    )
    event = ONEPOINT.parse(body, content_type=FORM)
    assert event.provider == "onepoint"
    assert event.type is EventType.receipt
    assert event.status == "failed"
    assert event.provider_status == "Failure"
    assert event.occurred_at == datetime(2024, 3, 5, 14, 22, 31, 645773, tzinfo=UTC)
    assert event.inbound is False
    assert event.carrier == "EE"
    assert event.number_type == "mobile"
    assert event.segments == 3
    assert event.raw == body


# --------------------------------------------------------------------------- bad input


def assert_one_line_without_body(exc: BaseException, body: bytes) -> None:
    message = str(exc)
    assert message
    assert "\n" not in message
    assert "\r" not in message
    assert body.decode("utf-8", "replace") not in message


@pytest.mark.parametrize(
    "body",
    [
        b'{"Type": "Receipt", "MessageID": "MS1312312312323",',
        b'{"Type": Receipt, "MessageID": "MS1312312312323"}',
        b'{"Type": "Receipt"}\n{"Type": "Receipt"}',
        b'{\n  "Type": "Receipt",\n  "MessageID": "MS1312312312323"\n',
    ],
)
def test_onepoint_invalid_json_is_payload_error(body: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        ONEPOINT.parse(body, content_type=JSON)
    assert not isinstance(info.value, UnsupportedPayload)
    assert_one_line_without_body(info.value, body)
    assert "MS1312312312323" not in str(info.value)


def test_onepoint_invalid_json_sniffed_is_payload_error() -> None:
    body = b'{"Type": "Receipt", "MessageID": "MS1312312312323", }'
    with pytest.raises(PayloadError) as info:
        ONEPOINT.parse(body)
    assert_one_line_without_body(info.value, body)


def test_onepoint_json_array_is_payload_error() -> None:
    body = b'[{"Type": "Receipt", "MessageID": "MS1312312312323", "Status": "sent"}]'
    with pytest.raises(PayloadError) as info:
        ONEPOINT.parse(body, content_type=JSON)
    assert not isinstance(info.value, UnsupportedPayload)
    assert_one_line_without_body(info.value, body)


@pytest.mark.parametrize("body", [b'"Receipt"', b"42", b"null", b"true"])
def test_onepoint_json_scalar_is_payload_error(body: bytes) -> None:
    with pytest.raises(PayloadError):
        ONEPOINT.parse(body, content_type=JSON)


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"event": "ping", "auth": "abc"}',
        b'{"Timestamp": "2024-03-05T14:22:31Z"}',
        b'{"Inbound": true, "MetaData": [{"OrgID": 1010}], "Carrier": "EE"}',
    ],
)
def test_onepoint_object_without_callback_fields_is_payload_error(body: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        ONEPOINT.parse(body, content_type=JSON)
    assert_one_line_without_body(info.value, body)


def test_diy_form_without_callback_fields_is_payload_error() -> None:
    with pytest.raises(PayloadError):
        DIY.parse(b"auth=abc&sig=9f86d081", content_type=FORM)


def test_diy_query_without_callback_fields_is_payload_error() -> None:
    with pytest.raises(PayloadError):
        DIY.parse(b"", query="auth=abc")


def test_onepoint_inbound_not_boolean_names_field() -> None:
    body = json_body(Type="Message", MessageID="MS1312312312323", Inbound="maybe")
    with pytest.raises(PayloadError) as info:
        ONEPOINT.parse(body, content_type=JSON)
    assert "Inbound" in str(info.value)
    assert_one_line_without_body(info.value, body)


def test_diy_form_inbound_not_boolean_is_dropped_and_logged_by_name() -> None:
    """A flag with no sane reading does not cost the callback: it is kept without it."""
    body = b"Type=Message&MessageID=MS1312312313001&Inbound=maybe"
    with capture_logs() as logs:
        event = DIY.parse(body, content_type=FORM)
    assert event.message_id == "MS1312312313001"
    assert event.inbound is None
    assert {"event": "unreadable field dropped", "field": "Inbound", "log_level": "warning"} in logs


def test_diy_query_inbound_not_boolean_is_dropped_and_logged_by_name() -> None:
    with capture_logs() as logs:
        event = DIY.parse(b"", query="Type=Message&MessageID=MS1312312313001&Inbound=maybe")
    assert event.inbound is None
    assert [entry["field"] for entry in logs if "field" in entry] == ["Inbound"]


def test_onepoint_metadata_list_with_non_object_is_payload_error() -> None:
    body = (
        b'{"Type": "Receipt", "MessageID": "MS1312312312323", '
        b'"MetaData": [{"OrgID": 1010}, "Campaign", {"Instance": "ETRERT"}]}'
    )
    with pytest.raises(PayloadError) as info:
        ONEPOINT.parse(body, content_type=JSON)
    assert not isinstance(info.value, UnsupportedPayload)
    assert_one_line_without_body(info.value, body)


def test_diy_form_metadata_list_with_non_object_is_payload_error() -> None:
    body = b"Type=Receipt&MessageID=MS1312312313002&MetaData=%5B%7B%22Wave%22%3A2%7D%2C3%5D"
    with pytest.raises(PayloadError):
        DIY.parse(body, content_type=FORM)


XML_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Callback><Type>Receipt</Type><MessageID>MS1312312312323</MessageID>"
    b"<Status>delivered</Status></Callback>"
)


@pytest.mark.parametrize("content_type", [None, "application/xml", "text/xml"])
def test_onepoint_xml_body_is_unsupported(content_type: str | None) -> None:
    for provider in (ONEPOINT, DIY):
        with pytest.raises(UnsupportedPayload) as info:
            provider.parse(XML_BODY, content_type=content_type)
        assert isinstance(info.value, PayloadError)
        assert "\n" not in str(info.value)


def test_diy_form_body_not_utf8_keeps_the_callback_with_replacement_characters() -> None:
    body = "Type=Message&MessageID=MS1312312313001&Message=Café à 8h".encode("latin-1")
    event = DIY.parse(body, content_type=FORM)
    assert event.type is EventType.message
    assert event.text == "Caf\ufffd \ufffd 8h"
    assert event.raw == body


def test_diy_form_body_percent_encoded_not_utf8_keeps_the_callback() -> None:
    body = b"Type=Message&MessageID=MS1312312313001&Message=Caf%E9"
    event = DIY.parse(body, content_type=FORM)
    assert event.text == "Caf\ufffd"
    assert event.message_id == "MS1312312313001"


@pytest.mark.parametrize("body", [b"", b"   ", b"\r\n"])
def test_onepoint_empty_body_without_query_is_payload_error(body: bytes) -> None:
    for provider in (ONEPOINT, DIY):
        with pytest.raises(PayloadError):
            provider.parse(body, content_type=JSON)
        with pytest.raises(PayloadError):
            provider.parse(body)
