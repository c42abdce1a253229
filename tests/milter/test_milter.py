"""The milter server over real sockets, driven by the test milter client (milter_client.py):
negotiation, every command, macros, pipelining, abort, quit, connection reuse, broken
packets, limits, and what each policy makes it answer, with the quarantine on disk."""

from __future__ import annotations

import json
import logging
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from proxy.proxy_harness import free_port

from mailfilter.frontend import milter_protocol as mp
from mailfilter.frontend.milter import MilterSession
from milter.milter_client import (
    ABORT,
    ACCEPT,
    ADDHEADER,
    BODY,
    BODYEOB,
    CONNECT,
    CONTINUE,
    DATA,
    EOH,
    HEADER,
    HELO,
    LEADSPC,
    MAIL,
    NR_BODY,
    OPTNEG,
    POSTFIX_ACTIONS,
    POSTFIX_PROTOCOL,
    QUARANTINE,
    QUIT,
    QUIT_NC,
    RCPT,
    REPLYCODE,
    SKIP,
    SKIP_BIT,
    UNKNOWN,
    V2_ACTIONS,
    V2_PROTOCOL,
    MilterClient,
    cstr,
    packet,
    wait_for,
)
from milter.milter_harness import RunningMilter, clean_message, matching_message

Factory = Callable[..., RunningMilter]

ADDHDRS, QUARANTINE_ACT, SETSYMLIST = 0x01, 0x20, 0x100


def client(m: RunningMilter, **negotiation: int) -> MilterClient:
    c = MilterClient(m.address)
    c.negotiate(**negotiation)
    c.run(c.session_packets())
    return c


def header_value(replies: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out = {}
    for code, data in replies:
        if code == ADDHEADER:
            name, value, _ = data.split(b"\0")
            out[name.decode()] = value.decode()
    return out


# --- negotiation ------------------------------------------------------------------------------


def test_version_6_negotiation_asks_only_for_what_it_needs(milter_factory: Factory) -> None:
    m = milter_factory()
    c = MilterClient(m.address)
    agreed = c.negotiate()
    assert agreed.version == 6
    assert agreed.actions == ADDHDRS | QUARANTINE_ACT | SETSYMLIST
    p = agreed.protocol
    # skips EOH, DATA and unknown commands; answers nothing but the end of message
    assert p & 0x40 and p & 0x200 and p & 0x100
    assert all(p & bit for bit in (1 << 12, 1 << 13, 1 << 14, 1 << 15, 1 << 7, NR_BODY))
    assert p & LEADSPC and p & SKIP_BIT
    # needs connect, helo, mail, rcpt, headers and body
    assert not p & (0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20)
    assert p & ~POSTFIX_PROTOCOL == 0
    assert "{client_addr}" in agreed.symbols[0] and "{client_name}" in agreed.symbols[0]
    assert "{auth_authen}" in agreed.symbols[2] and "i" in agreed.symbols[5].split()
    c.close()


def test_version_2_gets_version_2_and_only_what_it_offered(milter_factory: Factory) -> None:
    m = milter_factory()
    c = MilterClient(m.address)
    agreed = c.negotiate(version=2, actions=V2_ACTIONS, protocol=V2_PROTOCOL)
    assert (agreed.version, agreed.actions, agreed.protocol) == (2, ADDHDRS | QUARANTINE_ACT,
                                                                 0x40)
    assert agreed.symbols == {}
    # every command answered (no no-reply bits in version 2), the message accepted
    assert c.run(c.session_packets()) == []
    replies = c.send_message(clean_message())
    assert replies[-1] == (ACCEPT, b"")
    assert header_value(replies) == {"X-Mailfilter": "clean"}  # (no leading space: MTA adds)
    c.close()


def test_an_mta_older_than_version_2_is_refused(milter_factory: Factory) -> None:
    m = milter_factory()
    c = MilterClient(m.address)
    c.send(OPTNEG, struct.pack(">III", 1, 0xF, 0x7F))
    assert c.closed_by_peer()
    c.close()


def test_commands_before_negotiation_close_the_connection(milter_factory: Factory) -> None:
    m = milter_factory()
    c = MilterClient(m.address)
    c.send(HELO, cstr("client.test"))
    assert c.closed_by_peer()


# --- messages and policies ------------------------------------------------------------------


def test_clean_message_is_accepted_with_one_round_trip(milter_factory: Factory) -> None:
    m = milter_factory()
    c = client(m)
    pairs = c.message_packets(clean_message())
    for _cmd, pkt in pairs[:-1]:
        c.send_raw(pkt)
    assert c.nothing_pending()  # no answer to anything before the end of message
    c.send_raw(pairs[-1][1])
    replies = c.read_until_final()
    assert replies == [(ADDHEADER, b"X-Mailfilter\0 clean\0"), (ACCEPT, b"")]
    assert m.records() == []
    c.close()


def test_matching_message_is_held_and_recorded(milter_factory: Factory) -> None:
    m = milter_factory()
    c = client(m)
    raw = matching_message("match-hold")
    replies = c.send_message(raw, queue_id="4XQ1Z2", auth="alice",
                             mail_params=("SIZE=1234", "BODY=8BITMIME"),
                             rcpts=("bob@example.net", "carol@example.net"))
    assert [code for code, _ in replies] == [QUARANTINE, ACCEPT]
    reason = replies[0][1]
    assert reason.startswith(b"mailfilter ") and reason.endswith(b": match\0")
    [record] = m.records()
    assert reason.split()[1].rstrip(b":").decode() == record["id"]
    assert record["verdict"] == "match" and record["action"] == "quarantine"
    assert record["subject"] == "match-hold"
    assert record["queue_id"] == "4XQ1Z2"
    assert record["client"] == {"addr": "192.0.2.7", "name": "client.test",
                                "helo": "client.test"}
    assert record["envelope"]["mail_from"] == "alice@example.org"
    assert record["envelope"]["rcpt_tos"] == ["bob@example.net", "carol@example.net"]
    assert record["envelope"]["mail_options"] == ["SIZE=1234", "BODY=8BITMIME"]
    assert record["front_end"] == "milter"
    macros = record["milter"]["macros"]
    assert macros["{client_addr}"] == "192.0.2.7" and macros["i"] == "4XQ1Z2"
    assert macros["{auth_authen}"] == "alice"
    # the rebuilt message is the one sent, byte for byte (headers with HDR_LEADSPC)
    assert m.quarantined_messages() == [raw]
    c.close()


def test_reject_policy(milter_factory: Factory) -> None:
    m = milter_factory(policy={"on_match": "reject"})
    c = client(m)
    assert c.send_message(matching_message()) == [(REPLYCODE, b"550 5.7.1 Message content "
                                                              b"rejected\0")]
    assert m.records() == []
    c.close()


def test_tag_policy(milter_factory: Factory) -> None:
    m = milter_factory(policy={"on_match": "tag"})
    c = client(m)
    replies = c.send_message(matching_message())
    assert replies == [(ADDHEADER, b"X-Mailfilter\0 match\0"), (ACCEPT, b"")]
    c.close()


def test_no_header_when_add_header_is_off(milter_factory: Factory) -> None:
    m = milter_factory(smtp={"add_header": False})
    c = client(m)
    assert c.send_message(clean_message()) == [(ACCEPT, b"")]
    c.close()


def test_scan_failure_tempfails(milter_factory: Factory) -> None:
    m = milter_factory()
    m.index.fail = True  # the lists never loaded
    c = client(m)
    [(code, data)] = c.send_message(clean_message())
    assert code == REPLYCODE and data.startswith(b"451 4.3.0 ")
    m.index.fail = False
    assert c.send_message(clean_message())[-1] == (ACCEPT, b"")
    c.close()


def test_scan_failure_with_on_error_accept(milter_factory: Factory) -> None:
    m = milter_factory(policy={"on_error": "accept"})
    m.index.fail = True
    c = client(m)
    replies = c.send_message(clean_message())
    assert replies == [(ADDHEADER, b"X-Mailfilter\0 unscanned\0"), (ACCEPT, b"")]
    c.close()


def test_quarantine_write_failure_tempfails_without_holding(milter_factory: Factory,
                                                            tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    m = milter_factory(quarantine={"path": str(blocker / "quarantine")})
    c = client(m)
    [(code, data)] = c.send_message(matching_message())
    assert code == REPLYCODE and data.startswith(b"451 4.3.0 ")  # no QUARANTINE before it
    c.close()


def test_quarantine_without_the_mta_hold_action_discards(milter_factory: Factory) -> None:
    m = milter_factory()
    c = client(m, actions=POSTFIX_ACTIONS & ~QUARANTINE_ACT)
    assert c.send_message(matching_message()) == [(b"d", b"")]
    assert len(m.records()) == 1  # ours has it
    c.close()


def test_headers_without_leading_space_negotiated(milter_factory: Factory) -> None:
    m = milter_factory()
    c = client(m, protocol=POSTFIX_PROTOCOL & ~LEADSPC)
    raw = matching_message("no-leadspc")
    assert c.send_message(raw)[0][0] == QUARANTINE
    [held] = m.quarantined_messages()
    # the MTA ate one space after each colon; the rebuilt message puts it back
    assert held == raw
    c.close()


def test_folded_header_is_rebuilt_with_crlf(milter_factory: Factory) -> None:
    m = milter_factory()
    c = client(m)
    raw = matching_message("folded").replace(
        b"Subject: folded\r\n", b"Subject: folded\r\n\tsecond line\r\n")
    c.send_message(raw)
    assert m.quarantined_messages() == [raw]
    assert m.records()[0]["subject"] == "folded second line"
    c.close()


def test_last_body_chunk_may_come_with_end_of_message(milter_factory: Factory) -> None:
    """Sendmail style: the final chunk in SMFIC_BODYEOB."""
    m = milter_factory()
    c = client(m)
    raw = matching_message("eob-data")
    pairs = c.message_packets(raw)
    headers_end = raw.index(b"\r\n\r\n") + 4
    body = raw[headers_end:]
    kept = [(cmd, p) for cmd, p in pairs if cmd not in (BODY, BODYEOB)]
    kept.append((BODYEOB, packet(BODYEOB, body)))
    assert c.run(kept)[-1] == (ACCEPT, b"")
    assert m.quarantined_messages() == [raw]
    c.close()


# --- every command, answered when the MTA waits for it ------------------------------------


def test_every_command_with_answers(milter_factory: Factory) -> None:
    """An MTA without the no-reply bits (and sending DATA, EOH and unknown commands
    anyway) gets CONTINUE for each of them."""
    m = milter_factory()
    c = MilterClient(m.address)
    c.negotiate(protocol=0x7F | (1 << 8) | (1 << 9) | LEADSPC)
    assert c.agreed is not None and c.agreed.protocol == 0x40 | (1 << 8) | (1 << 9) | LEADSPC
    c.run(c.session_packets())
    c.send(UNKNOWN, cstr("XYZZY"))
    assert c.read() == (CONTINUE, b"")
    c.send(MAIL, cstr("<alice@example.org>"))
    assert c.read() == (CONTINUE, b"")
    c.send(RCPT, cstr("<bob@example.net>"))
    assert c.read() == (CONTINUE, b"")
    c.send(DATA)
    assert c.read() == (CONTINUE, b"")
    c.send(HEADER, cstr("Subject", " every"))
    assert c.read() == (CONTINUE, b"")
    c.send(EOH)
    assert c.read() == (CONTINUE, b"")
    c.send(BODY, b"Hello\r\n")
    assert c.read() == (CONTINUE, b"")
    c.send(BODYEOB)
    assert c.read_until_final() == [(ADDHEADER, b"X-Mailfilter\0 clean\0"), (ACCEPT, b"")]
    c.send(QUIT)
    assert c.closed_by_peer()


def test_pipelined_messages(milter_factory: Factory) -> None:
    """Everything of two messages in one write (what an MTA with no-reply bits may do):
    two sets of answers, in order."""
    m = milter_factory()
    c = MilterClient(m.address)
    c.negotiate()
    pairs = c.session_packets() + c.message_packets(matching_message("p1"), queue_id="Q1") \
        + c.message_packets(clean_message("p2"), queue_id="Q2")
    c.pipelined(pairs)
    first, second = c.read_until_final(), c.read_until_final()
    assert [code for code, _ in first] == [QUARANTINE, ACCEPT]
    assert second == [(ADDHEADER, b"X-Mailfilter\0 clean\0"), (ACCEPT, b"")]
    [record] = m.records()
    assert record["queue_id"] == "Q1" and record["subject"] == "p1"
    c.close()


def test_pipelined_with_answers_to_every_command(milter_factory: Factory) -> None:
    m = milter_factory()
    c = MilterClient(m.address)
    c.negotiate(version=2, actions=V2_ACTIONS, protocol=V2_PROTOCOL)
    pairs = c.session_packets() + c.message_packets(clean_message("v2 pipelined"))
    c.pipelined(pairs)
    answered = [cmd for cmd, _ in pairs if cmd in (CONNECT, HELO, MAIL, RCPT, HEADER, BODY)]
    for _ in answered:
        assert c.read() == (CONTINUE, b"")
    assert c.read_until_final()[-1] == (ACCEPT, b"")
    c.close()


def test_pipelined_while_a_message_is_scanned(milter_factory: Factory) -> None:
    """More pipelined than the buffer limit while an end of message is handled: reading
    pauses, and resumes once it is answered; nothing is lost or reordered."""
    m = milter_factory(max_packet=70_000)
    c = client(m)
    pairs: list[tuple[bytes, bytes]] = []
    for i in range(3):
        pairs += c.message_packets(matching_message(f"paused {i}"), queue_id=f"QP{i}")
    assert len(c.pipelined(pairs)) > 3 * 70_000
    for _ in range(3):
        assert [code for code, _ in c.read_until_final()] == [QUARANTINE, ACCEPT]
    assert sorted(r["subject"] for r in m.records()) == ["paused 0", "paused 1", "paused 2"]
    # and reading went on: the connection takes the next message
    c.sock.settimeout(10)
    assert c.send_message(clean_message())[-1] == (ACCEPT, b"")
    c.close()


def test_abort_mid_message_then_another_message(milter_factory: Factory) -> None:
    m = milter_factory()
    c = client(m)
    pairs = c.message_packets(matching_message("aborted"), queue_id="QA")
    body_at = next(i for i, (cmd, _) in enumerate(pairs) if cmd == BODY)
    for _cmd, pkt in pairs[:body_at + 1]:  # headers and the first body chunk
        c.send_raw(pkt)
    c.send(ABORT)
    assert c.nothing_pending()
    replies = c.send_message(clean_message("after abort"), queue_id="QB")
    assert replies == [(ADDHEADER, b"X-Mailfilter\0 clean\0"), (ACCEPT, b"")]
    assert m.records() == []  # the aborted message was never scanned
    # and a matching message after that still is
    assert c.send_message(matching_message("third"), queue_id="QC")[0][0] == QUARANTINE
    [record] = m.records()
    assert record["subject"] == "third" and record["queue_id"] == "QC"
    c.close()


def test_quit_nc_reuses_the_connection_for_a_new_client(milter_factory: Factory) -> None:
    m = milter_factory()
    c = client(m)
    assert c.send_message(clean_message(), auth="alice")[-1] == (ACCEPT, b"")
    c.send(QUIT_NC)
    assert c.nothing_pending()
    # a new SMTP client on the same milter connection, without negotiating again
    c.run(c.session_packets(client_addr="198.51.100.9", client_name="other.test",
                            helo="other.test"))
    assert c.send_message(matching_message("reused"), queue_id="QN")[0][0] == QUARANTINE
    [record] = m.records()
    assert record["client"] == {"addr": "198.51.100.9", "name": "other.test",
                                "helo": "other.test"}
    assert "{auth_authen}" not in record["milter"]["macros"]  # nothing of the first client
    c.send(QUIT)
    assert c.closed_by_peer()
    assert wait_for(lambda: not m.server.sessions)


# --- broken peers -------------------------------------------------------------------------


def _healthy(m: RunningMilter) -> MilterClient:
    """A connection mid-message, to show that another one's failure leaves it alone."""
    c = client(m)
    pairs = c.message_packets(clean_message("bystander"))
    for _cmd, pkt in pairs[:-1]:
        c.send_raw(pkt)
    return c


def _finish(c: MilterClient) -> None:
    c.send(BODYEOB)
    assert c.read_until_final()[-1] == (ACCEPT, b"")
    c.close()


@pytest.mark.parametrize("bad", [
    struct.pack(">I", 0x7FFFFFFF) + b"B",         # absurd length: refused before reading it
    struct.pack(">I", 0),                          # empty packet
    packet(b"Z", b"whatever"),                     # unknown command letter
    packet(HEADER, b"no terminator"),              # malformed data
    packet(CONNECT, cstr("host") + b"9"),          # unknown address family
    b"GET / HTTP/1.0\r\n\r\n",                     # not milter at all
], ids=["oversize", "empty", "unknown-command", "malformed-header", "bad-family", "http"])
def test_broken_packet_closes_only_that_connection(milter_factory: Factory, bad: bytes,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    m = milter_factory()
    healthy = _healthy(m)
    c = client(m)
    c.send_raw(bad)
    assert c.closed_by_peer()
    assert any(r.getMessage().startswith("milter protocol error") for r in caplog.records)
    _finish(healthy)
    assert 'mailfilter_errors_total{reason="milter-protocol"} 1.0' in m.metrics.render().decode()


def test_commands_out_of_place_close_the_connection(milter_factory: Factory) -> None:
    m = milter_factory()
    c = client(m)
    c.send(HEADER, cstr("Subject", " no MAIL before"))
    assert c.closed_by_peer()
    c = client(m)
    c.send(OPTNEG, struct.pack(">III", 6, POSTFIX_ACTIONS, POSTFIX_PROTOCOL))  # again
    assert c.closed_by_peer()


def test_idle_connection_times_out(milter_factory: Factory,
                                   caplog: pytest.LogCaptureFixture) -> None:
    m = milter_factory(smtp={"command_timeout": 0.5})
    c = client(m)
    started = time.monotonic()
    assert c.closed_by_peer(timeout=5)
    assert time.monotonic() - started < 3
    assert any("idle too long" in r.getMessage() for r in caplog.records)


def test_peer_closing_mid_packet(milter_factory: Factory) -> None:
    m = milter_factory()
    c = client(m)
    c.send_raw(struct.pack(">I", 100) + b"L" + b"Subj")
    c.close()
    assert wait_for(lambda: not m.server.sessions)
    _finish(_healthy(m))


# --- limits -------------------------------------------------------------------------------


def _big_message() -> bytes:
    return clean_message("big").replace(b"nothing to see.", b"x" * 200_000)


def test_body_over_the_size_limit_is_refused(milter_factory: Factory) -> None:
    m = milter_factory(smtp={"max_message_size": 100_000})
    c = client(m)
    assert c.send_message(_big_message()) == [(REPLYCODE, b"552 5.3.4 Message size exceeds "
                                                          b"fixed maximum message size\0")]
    # the connection goes on with the next message
    assert c.send_message(clean_message())[-1] == (ACCEPT, b"")
    c.close()


def test_body_over_the_size_limit_is_skipped_when_answered(milter_factory: Factory) -> None:
    """An MTA that waits for an answer to each body chunk is told to skip the rest."""
    m = milter_factory(smtp={"max_message_size": 100_000})
    c = client(m, protocol=POSTFIX_PROTOCOL & ~NR_BODY)
    pairs = c.message_packets(_big_message())
    answers = []
    for cmd, pkt in pairs:
        if cmd == BODYEOB:
            break
        c.send_raw(pkt)
        if cmd == BODY:
            answers.append(c.read()[0])
            if answers[-1] == SKIP:
                break  # the MTA sends no more body
    assert answers == [CONTINUE, SKIP]
    c.send(BODYEOB)
    assert c.read_until_final()[0][1].startswith(b"552 5.3.4")
    c.close()


def test_max_connections(milter_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    m = milter_factory(smtp={"max_connections": 2})
    first, second = client(m), client(m)
    third = MilterClient(m.address)
    assert third.closed_by_peer()
    assert any(getattr(r, "fields", {}).get("reason") == "too many connections"
               for r in caplog.records)
    for c in (first, second):
        assert c.send_message(clean_message())[-1] == (ACCEPT, b"")
    first.close()
    assert wait_for(lambda: len(m.server.sessions) == 1)
    fourth = client(m)  # the freed place is taken again
    assert fourth.send_message(clean_message())[-1] == (ACCEPT, b"")
    for c in (second, fourth):
        c.close()


def test_max_concurrent_messages(milter_factory: Factory) -> None:
    """Messages beyond the limit wait for a slot; none is refused or lost."""
    m = milter_factory(smtp={"max_concurrent_messages": 1})
    results: dict[int, list[tuple[bytes, bytes]]] = {}

    def one(i: int) -> None:
        c = client(m)
        results[i] = c.send_message(matching_message(f"concurrent {i}"), queue_id=f"Q{i}")
        c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [[code for code, _ in results[i]] for i in range(4)] == [[QUARANTINE, ACCEPT]] * 4
    assert sorted(r["queue_id"] for r in m.records()) == ["Q0", "Q1", "Q2", "Q3"]


def test_clients_outside_allowed_clients_are_refused(milter_factory: Factory) -> None:
    m = milter_factory(smtp={"allowed_clients": ["192.0.2.0/24"]})
    c = MilterClient(m.address)
    assert c.closed_by_peer()


# --- unix socket, drain, metrics -------------------------------------------------------------


def test_unix_socket(milter_factory: Factory, tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a leftover of a crashed run: nothing listens on it
    m = milter_factory(milter={"listen": f"unix:{path}"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o660 and stat.S_ISSOCK(path.stat().st_mode)
    c = client(m)
    assert c.send_message(matching_message("unix"))[0][0] == QUARANTINE
    assert m.records()[0]["milter"]["peer"] == "unix"
    c.close()
    # a second instance must not take over a socket someone listens on
    with pytest.raises(OSError, match="another process is listening"):
        milter_factory(milter={"listen": f"unix:{path}"})
    assert path.exists()
    m.drain()
    assert not path.exists()  # removed on shutdown


def test_unix_socket_path_taken_by_a_file(milter_factory: Factory, tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        milter_factory(milter={"listen": f"unix:{path}"})
    assert path.read_text() == "not a socket"


def test_drain_finishes_the_message_in_flight_and_closes_idle(milter_factory: Factory) -> None:
    m = milter_factory()
    idle = client(m)
    busy = client(m)
    pairs = busy.message_packets(matching_message("in flight"))
    for _cmd, pkt in pairs[:-1]:
        busy.send_raw(pkt)
    assert wait_for(lambda: any(s.busy for s in m.server.sessions))
    done = threading.Event()
    threading.Thread(target=lambda: (m.drain(10.0), done.set()), daemon=True).start()
    assert idle.closed_by_peer()
    with pytest.raises(OSError):  # no new connections
        MilterClient(m.address, timeout=2).negotiate()
    busy.send_raw(pairs[-1][1])
    assert [code for code, _ in busy.read_until_final()] == [QUARANTINE, ACCEPT]
    assert busy.closed_by_peer()
    assert done.wait(10)
    assert len(m.records()) == 1


def test_connections_and_messages_in_metrics(milter_factory: Factory) -> None:
    m = milter_factory()
    c = client(m)
    c.send_message(clean_message())
    assert len(m.server.sessions) == 1
    text = m.metrics.render().decode()
    assert 'mailfilter_messages_total{action="relay",verdict="clean"} 1.0' in text
    c.close()


def test_one_log_line_per_message(milter_factory: Factory,
                                  caplog: pytest.LogCaptureFixture) -> None:
    m = milter_factory()
    c = client(m)
    caplog.set_level(logging.INFO, logger="mailfilter.message")
    c.send_message(matching_message("logged"), queue_id="QL")
    c.close()
    lines = [r for r in caplog.records if r.name == "mailfilter.message"]
    assert len(lines) == 1
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert fields["front_end"] == "milter" and fields["queue_id"] == "QL"
    assert fields["action"] == "quarantine" and fields["client"] == "192.0.2.7"
    assert json.dumps(fields)  # (a plain, serialisable line)


def test_log_line_words_of_the_milter(milter_factory: Factory,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """The milter accepts mail, it relays nothing: `action=accept` (issue 18); a message
    over the size limit was never scanned: `verdict=unscanned`, not null."""
    m = milter_factory(smtp={"max_message_size": 100_000})
    c = client(m)
    caplog.set_level(logging.INFO, logger="mailfilter.message")
    c.send_message(clean_message("plain"), queue_id="QA")
    c.send_message(_big_message(), queue_id="QB")
    c.close()
    fields = [r.fields for r in caplog.records  # type: ignore[attr-defined]
              if r.name == "mailfilter.message"]
    assert [(f["queue_id"], f["verdict"], f["action"], f["reason"]) for f in fields] == [
        ("QA", "clean", "accept", "clean"), ("QB", "unscanned", "reject", "too-big")]


def test_default_action_for_errors_of_ours(milter_factory: Factory) -> None:
    """What the MTA is told when the milter itself fails on a message
    (`milter.default_action`); nothing in a working setup raises there, so the session's
    error path is called directly."""
    for choice, expected in (("tempfail", b"y451 4.3.0 "), ("reject", b"y550 5.7.1 "),
                             ("accept", b"h")):
        m = milter_factory(milter={"default_action": choice})
        session = m.call(lambda m=m: MilterSession(m.server))  # (made on the server's loop)
        session.agreed = mp.negotiate(mp.OptionNegotiation(6, 0x1FF, 0x1FFFFF), 0x1FF,
                                      0x1FFFFF)
        out, outcome = session._on_error("ID1")
        assert out[4:].startswith(expected), choice
        assert outcome.action.reason == "internal"


def test_inet_listener_on_ipv6(milter_factory: Factory) -> None:
    port = free_port()
    try:
        m = milter_factory(milter={"listen": f"inet:[::1]:{port}"},
                           smtp={"allowed_clients": ["::1/128"]})
    except OSError:
        pytest.skip("no IPv6 loopback here")
    assert m.server.address == f"inet:[::1]:{port}"
    c = MilterClient(("::1", port))
    c.negotiate()
    c.run(c.session_packets())
    assert c.send_message(clean_message())[-1] == (ACCEPT, b"")
    c.close()


@pytest.mark.parametrize("spelling", ["inet:{port}@127.0.0.1", "inet:{port}@[127.0.0.1]",
                                      "inet:127.0.0.1:{port}", "local:{sock}"])
def test_sendmail_and_opendkim_spellings_of_listen(milter_factory: Factory, tmp_path: Path,
                                                   spelling: str) -> None:
    """`inet:PORT@HOST` and `local:PATH`, as Sendmail and OpenDKIM write them, listen where
    they say (issue 18, item 5)."""
    port, sock = free_port(), tmp_path / "m.sock"
    m = milter_factory(milter={"listen": spelling.format(port=port, sock=sock)})
    if spelling.startswith("local:"):
        assert m.server.address == f"unix:{sock}"
        c = client(m)
    else:
        assert m.server.address == f"inet:127.0.0.1:{port}"
        c = MilterClient(("127.0.0.1", port))
        c.negotiate()
        c.run(c.session_packets())
    assert c.send_message(clean_message())[-1] == (ACCEPT, b"")
    c.close()


def test_inet_port_alone_listens_on_every_interface(milter_factory: Factory) -> None:
    port = free_port()
    m = milter_factory(milter={"listen": f"inet:{port}"})
    assert m.server.address == f"inet:0.0.0.0:{port}"
