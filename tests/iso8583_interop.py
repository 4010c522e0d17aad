#!/usr/bin/env python3
"""Interoperability check of corepay's ISO 8583 endpoint with an implementation corepay did not
write: pyiso8583 (PyPI `pyiso8583`, `import iso8583`).

Drives one gateway over a real TCP socket through every message type of the corepay profile
(DESIGN.md §6) and checks each response: MTI, DE39, the echoed fields, DE38 on approval only,
DE2/DE35 never echoed, no field outside the profile, DE54 on balance inquiries, identical answers
to duplicates and repeats. It keeps a model of the accounts (balance, held) that every approved
step moves, checks the model through balance inquiries (DE54) as it goes, and prints it at the end
as one line `EXPECT {json}` for the caller to compare with the HTTP admin API.

The scenario is the table built by `scenario()`: one `Step` per message. To add a case, add a row.

Usage (normally run by tests/iso8583_interop.rs):
  iso8583_interop.py --port P --header binary2|ascii4 --bitmap binary|hex --merchant ID
      --card main=PAN:YYMM:BALANCE --card poor=... --card expired=... --card blocked=...
      --card frozen=... --settlement BALANCE [--currency 978]
BALANCE is in minor units. Roles: main (plenty of money), poor (little), expired (card past its
expiry, YYMM its stored expiry), blocked (card blocked), frozen (account blocked).
Exit status 0 when every check passed; 1 with a FAIL line on the first failure; 2 (also with a
FAIL line) when pyiso8583 cannot be imported.
"""

import argparse
import copy
import datetime
import json
import socket
import struct
import sys

try:
    import iso8583
    import iso8583.specs
except ImportError as e:  # never skip: the caller must install pyiso8583 (scripts/test.sh does)
    print(f"FAIL: pyiso8583 is not importable ({e}); install it with `pip install pyiso8583`",
          flush=True)
    sys.exit(2)

# --------------------------------------------------------------------------------------------
# The corepay profile as pyiso8583 sees it.

ECHOED = ["3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49"]
NEVER_ECHOED = ["2", "35"]

# field: (len_type, max_len)  -- all data and length prefixes ASCII
PROFILE = {
    "2": (2, 19), "3": (0, 6), "4": (0, 12), "7": (0, 10), "11": (0, 6), "12": (0, 6),
    "13": (0, 4), "14": (0, 4), "18": (0, 4), "22": (0, 3), "25": (0, 2), "32": (2, 11),
    "35": (2, 37), "37": (0, 12), "38": (0, 6), "39": (0, 2), "41": (0, 8), "42": (0, 15),
    "43": (0, 40), "49": (0, 3), "54": (3, 120), "70": (0, 3), "90": (0, 42), "95": (0, 42),
}


def make_spec(bitmap):
    spec = copy.deepcopy(iso8583.specs.default_ascii)
    for key, (len_type, max_len) in PROFILE.items():
        spec[key].update(data_enc="ascii", len_enc="ascii", len_type=len_type, max_len=max_len)
    for key in ("p", "1"):
        if bitmap == "binary":
            spec[key].update(data_enc="b", len_type=0, max_len=8)
        else:
            spec[key].update(data_enc="ascii", len_type=0, max_len=16)
    return spec


# --------------------------------------------------------------------------------------------
# Framing and transport.

class Peer:
    def __init__(self, host, port, header, bitmap, timeout):
        self.header = header
        self.spec = make_spec(bitmap)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def frame(self, body):
        if self.header == "binary2":
            return struct.pack(">H", len(body)) + body
        return b"%04d" % len(body) + body

    def encode(self, msg):
        raw, _ = iso8583.encode(copy.deepcopy(msg), self.spec)
        return bytes(raw)

    def send_raw(self, data):
        self.sock.sendall(data)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed by the server (had {len(self.buf)} of "
                                      f"{n} bytes)")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_body(self):
        """One response body; zero-length keep-alive frames are skipped."""
        while True:
            if self.header == "binary2":
                (n,) = struct.unpack(">H", self._read(2))
            else:
                h = self._read(4)
                if not h.isdigit():
                    raise ValueError(f"ASCII length header is not 4 digits: {h!r}")
                n = int(h)
            if n:
                return self._read(n)

    def decode(self, body):
        decoded, _ = iso8583.decode(body, self.spec)
        return decoded


# --------------------------------------------------------------------------------------------
# The scenario model.

class Failure(Exception):
    pass


class Card:
    def __init__(self, role, pan, yymm):
        self.role, self.pan, self.yymm = role, pan, yymm


class Step:
    """One request and what its response must be.

    request: dict of fields (pyiso8583 decoded form, "t" = MTI)
    codes: allowed DE39 values
    approval: DE38 required when DE39 is 00 (and forbidden otherwise)
    same_as: name of an earlier step whose response body must be byte-identical
    effects: {role: (balance delta, held delta)} applied to the model when DE39 is 00
    inquiry: role whose balance this step asks for (checks DE54 against the model)
    """

    def __init__(self, name, request, codes, approval=False, same_as=None, effects=None,
                 inquiry=None):
        self.name = name
        self.request = request
        self.codes = codes if isinstance(codes, (list, tuple)) else [codes]
        self.approval = approval
        self.same_as = same_as
        self.effects = effects or {}
        self.inquiry = inquiry


def luhn_complete(partial):
    for d in "0123456789":
        pan = partial + d
        total = 0
        for i, ch in enumerate(reversed(pan)):
            v = int(ch)
            if i % 2 == 1:
                v *= 2
                if v > 9:
                    v -= 9
            total += v
        if total % 10 == 0:
            return pan
    raise AssertionError("unreachable")


def response_mti(mti):
    return mti[:2] + str(int(mti[2]) + 1) + "0"


class Scenario:
    """Builds requests with fresh keys (DE32, DE41, DE11, DE7) and remembers them by name."""

    ACQUIRER = "12345678"
    TERMINAL = "TERM0001"

    def __init__(self, args, cards):
        self.args = args
        self.cards = cards
        self.stan = 0
        self.sent = {}  # step name -> request dict
        self.merchant = args.merchant.ljust(15)  # DE42 is fixed ans15: space padded
        self.currency = args.currency

    def key_fields(self):
        self.stan += 1
        now = datetime.datetime.now(datetime.timezone.utc)
        local = now.astimezone()
        return {
            "7": now.strftime("%m%d%H%M%S"),
            "11": "%06d" % self.stan,
            "12": local.strftime("%H%M%S"),
            "13": local.strftime("%m%d"),
            "32": self.ACQUIRER,
            "37": "%012d" % (880000000000 + self.stan),
            "41": self.TERMINAL,
        }

    def card_fields(self, card, pan=None, yymm=None, track2=False):
        if track2:
            return {"35": f"{card.pan}={card.yymm}1011234567890"}
        return {"2": pan or card.pan, "14": yymm or card.yymm}

    def txn(self, mti, proc, amount, card=None, merchant=None, currency=None, **card_kw):
        m = {"t": mti, "3": proc, "4": "%012d" % amount, **self.key_fields(),
             "18": "5411", "22": "051", "25": "00",
             "42": (merchant or self.merchant).ljust(15),
             "43": "COREPAY INTEROP SHOP".ljust(25) + "PARIS".ljust(13) + "FR",
             "49": currency or self.currency}
        if card is not None:
            m.update(self.card_fields(card, **card_kw))
        return m

    def original_data(self, orig):
        """DE90: original MTI, STAN, DE7, DE32 (right-justified, zero-padded to 11), and the
        forwarding institution (11 zeros). The MTI is the original's with origin digit 0 (a
        repeat names the transaction it repeats)."""
        return orig["t"][:3] + "0" + orig["11"] + orig["7"] + orig["32"].rjust(11, "0") + "0" * 11

    def echo(self, code):
        k = self.key_fields()
        return {"t": "0800", "7": k["7"], "11": k["11"], "70": code}

    def follow_up(self, mti, orig, amount=None, replacement=None):
        """A completion (0220) or reversal (0400/0420) of `orig`: same card, terminal and
        merchant, a new STAN, DE90 naming the original."""
        m = {k: v for k, v in orig.items() if k in ("2", "3", "14", "18", "22", "25", "35",
                                                     "41", "42", "43", "49")}
        m.update({k: v for k, v in self.key_fields().items() if k not in ("41",)})
        m["t"] = mti
        m["4"] = orig["4"] if amount is None else "%012d" % amount
        m["90"] = self.original_data(orig)
        if replacement is not None:
            m["95"] = "%012d" % replacement + "0" * 30
        return m

    @staticmethod
    def repeat(orig):
        """The repeat (xxx1) of a request: the same message, same key, MTI origin digit 1."""
        m = dict(orig)
        m["t"] = orig["t"][:3] + "1"
        return m


def scenario(sc):
    """The table of steps. Amounts are minor units; effects move the model."""
    c = sc.cards
    main, poor = c["main"], c["poor"]
    S = []

    def step(name, request, codes, **kw):
        assert name not in sc.sent, f"two steps named {name!r}"
        sc.sent[name] = request
        S.append(Step(name, request, codes, **kw))
        return request

    def inquiry(name, card):
        step(name, sc.txn("0100", "310000", 0, card), "00", inquiry=card.role)

    hold = lambda role, amt: {role: (0, amt)}
    # capture `final` of a hold of `held`: the card pays, the merchant's settlement is credited
    capture = lambda role, held, final: {role: (-final, -held), "settlement": (final, 0)}
    sale = lambda role, amt: {role: (-amt, 0), "settlement": (amt, 0)}
    refund = lambda role, amt: {role: (amt, 0), "settlement": (-amt, 0)}

    # -- network management
    step("0800 sign-on", sc.echo("001"), "00")
    step("0800 echo test", sc.echo("301"), "00")

    # -- balance inquiry
    inquiry("0100 balance inquiry (start)", main)

    # -- authorization (hold), its repeat and a duplicate, then completion advice
    a1 = step("0100 authorization 100.00", sc.txn("0100", "000000", 10000, main), "00",
              approval=True, effects=hold("main", 10000))
    step("0101 repeat of the authorization", sc.repeat(a1), "00",
         same_as="0100 authorization 100.00")
    step("0100 duplicate (same DE32/41/11/7)", dict(a1), "00",
         same_as="0100 authorization 100.00")
    inquiry("0100 balance inquiry (one hold of 100.00)", main)
    c1 = step("0220 completion advice 75.00 of the 100.00", sc.follow_up("0220", a1, 7500), "00",
              effects=capture("main", 10000, 7500))
    step("0221 repeat of the completion advice", sc.repeat(c1), "00",
         same_as="0220 completion advice 75.00 of the 100.00")
    inquiry("0100 balance inquiry (after completion)", main)

    # -- completion advice for more than was authorized: 13, nothing moves; then reversed
    a_over = step("0100 authorization 10.00 (to over-complete)",
                  sc.txn("0100", "000000", 1000, main), "00", approval=True,
                  effects=hold("main", 1000))
    step("0220 completion advice 20.00 of a 10.00 authorization",
         sc.follow_up("0220", a_over, 2000), "13")
    step("0400 reversal of the over-completed authorization", sc.follow_up("0400", a_over),
         "00", effects=hold("main", -1000))

    # -- full reversal, reversed twice (released once), its repeat
    a2 = step("0100 authorization 50.00", sc.txn("0100", "000000", 5000, main), "00",
              approval=True, effects=hold("main", 5000))
    r2 = step("0400 full reversal of the 50.00", sc.follow_up("0400", a2), "00",
              effects=hold("main", -5000))
    step("0400 second reversal of the same 50.00 (new STAN)", sc.follow_up("0400", a2), "00")
    step("0401 repeat of the first reversal", sc.repeat(r2), "00",
         same_as="0400 full reversal of the 50.00")
    inquiry("0100 balance inquiry (reversal released once)", main)

    # -- partial reversal (DE95) then completion of what remains
    a3 = step("0100 authorization 40.00", sc.txn("0100", "000000", 4000, main), "00",
              approval=True, effects=hold("main", 4000))
    step("0400 partial reversal of the 40.00 to 15.00 (DE95)",
         sc.follow_up("0400", a3, replacement=1500), "00", effects=hold("main", -2500))
    inquiry("0100 balance inquiry (hold reduced to 15.00)", main)
    step("0220 completion advice 15.00 of the reduced authorization",
         sc.follow_up("0220", a3, 1500), "00", effects=capture("main", 1500, 1500))

    # -- reversal advice, its repeat
    a4 = step("0100 authorization 20.00", sc.txn("0100", "000000", 2000, main), "00",
              approval=True, effects=hold("main", 2000))
    r4 = step("0420 reversal advice of the 20.00", sc.follow_up("0420", a4), "00",
              effects=hold("main", -2000))
    step("0421 repeat of the reversal advice", sc.repeat(r4), "00",
         same_as="0420 reversal advice of the 20.00")

    # -- reversals of unknown originals
    ghost = sc.txn("0100", "000000", 3300, main)  # never sent
    step("0400 reversal of an unknown original", sc.follow_up("0400", ghost), "25")
    step("0420 reversal advice of an unknown original", sc.follow_up("0420", ghost), "00")
    inquiry("0100 balance inquiry (unknown reversals changed nothing)", main)

    # -- a repeat whose original never arrived is processed as the original
    a5 = sc.repeat(sc.txn("0100", "000000", 700, main))
    step("0101 repeat of an authorization never received", a5, "00", approval=True,
         effects=hold("main", 700))
    step("0400 reversal of that authorization", sc.follow_up("0400", a5), "00",
         effects=hold("main", -700))

    # -- card identified by track 2 (DE35) only
    a6 = step("0100 authorization 5.00 by track 2 (DE35)",
              sc.txn("0100", "000000", 500, main, track2=True), "00", approval=True,
              effects=hold("main", 500))
    step("0400 reversal of the track 2 authorization", sc.follow_up("0400", a6), "00",
         effects=hold("main", -500))

    # -- sale, its repeat; a sale reversed; refund to card
    s1 = step("0200 sale 30.00", sc.txn("0200", "000000", 3000, main), "00", approval=True,
              effects=sale("main", 3000))
    step("0201 repeat of the sale", sc.repeat(s1), "00", same_as="0200 sale 30.00")
    step("0200 duplicate sale (same DE32/41/11/7)", dict(s1), "00", same_as="0200 sale 30.00")
    s2 = step("0200 sale 12.00", sc.txn("0200", "000000", 1200, main), "00", approval=True,
              effects=sale("main", 1200))
    step("0400 reversal of the 12.00 sale", sc.follow_up("0400", s2), "00",
         effects=refund("main", 1200))
    step("0200 refund to card 25.00 (proc 200000)", sc.txn("0200", "200000", 2500, main), "00",
         approval=True, effects=refund("main", 2500))
    inquiry("0100 balance inquiry (after sales and refund)", main)

    # -- declines: never a DE38, never a change
    step("0100 insufficient funds", sc.txn("0100", "000000", 100000, poor), "51", approval=True)
    step("0200 sale, insufficient funds", sc.txn("0200", "000000", 100000, poor), "51",
         approval=True)
    bad = main.pan[:-1] + str((int(main.pan[-1]) + 1) % 10)
    step("0100 bad Luhn", sc.txn("0100", "000000", 100, main, pan=bad), "14", approval=True)
    step("0100 unknown card", sc.txn("0100", "000000", 100, main,
                                     pan=luhn_complete("411111987654321")), "14", approval=True)
    step("0100 expired card", sc.txn("0100", "000000", 100, c["expired"]), "54", approval=True)
    step("0100 DE14 in the past", sc.txn("0100", "000000", 100, main, yymm="2001"), "54",
         approval=True)
    step("0100 blocked card", sc.txn("0100", "000000", 100, c["blocked"]), "62", approval=True)
    step("0100 blocked account", sc.txn("0100", "000000", 100, c["frozen"]), "57",
         approval=True)
    step("0100 unknown merchant (DE42)",
         sc.txn("0100", "000000", 100, main, merchant="NO-SUCH-SHOP"), "58", approval=True)
    step("0200 unknown merchant (DE42)",
         sc.txn("0200", "000000", 100, main, merchant="NO-SUCH-SHOP"), "58", approval=True)
    step("0100 currency other than the merchant's (DE49 840)",
         sc.txn("0100", "000000", 100, main, currency="840"), "12", approval=True)
    inquiry("0100 balance inquiry (declines changed nothing)", main)
    inquiry("0100 balance inquiry (poor card)", poor)

    # -- holds left open, for the caller to find through HTTP (held): once each
    o1 = step("0100 authorization 33.00 left open", sc.txn("0100", "000000", 3300, main), "00",
              approval=True, effects=hold("main", 3300))
    step("0101 repeat of the open authorization", sc.repeat(o1), "00",
         same_as="0100 authorization 33.00 left open")
    step("0100 duplicate of the open authorization", dict(o1), "00",
         same_as="0100 authorization 33.00 left open")
    o2 = step("0100 authorization 60.00 left open", sc.txn("0100", "000000", 6000, main), "00",
              approval=True, effects=hold("main", 6000))
    r_o2 = step("0400 partial reversal of the 60.00 to 22.00 (DE95)",
                sc.follow_up("0400", o2, replacement=2200), "00", effects=hold("main", -3800))
    step("0401 repeat of the partial reversal", sc.repeat(r_o2), "00",
         same_as="0400 partial reversal of the 60.00 to 22.00 (DE95)")
    inquiry("0100 balance inquiry (open holds 33.00 + 22.00)", main)

    step("0800 sign-off", sc.echo("002"), "00")
    return S


# --------------------------------------------------------------------------------------------
# Checks.

def parse_de54(value):
    """DE54 entries of 20 characters: account type 2, amount type 2, currency 3, C/D, 12
    digits. Returns {amount type: (currency, signed minor units)}."""
    if not value or len(value) % 20:
        raise Failure(f"DE54 {value!r} is not a sequence of 20-character amounts")
    out = {}
    for i in range(0, len(value), 20):
        e = value[i:i + 20]
        acct, kind, cur, sign, amt = e[0:2], e[2:4], e[4:7], e[7], e[8:20]
        if not (acct.isdigit() and kind.isdigit() and cur.isdigit() and amt.isdigit()
                and sign in "CD"):
            raise Failure(f"DE54 entry {e!r} is malformed")
        out[kind] = (cur, int(amt) if sign == "C" else -int(amt))
    return out


def check(step, req, resp, raw, model, responses, currency):
    def need(cond, msg):
        if not cond:
            raise Failure(msg)

    want_mti = response_mti(req["t"])
    need(resp.get("t") == want_mti, f"MTI {resp.get('t')!r}, expected {want_mti}")
    code = resp.get("39")
    need(code in step.codes, f"DE39 {code!r}, expected {' or '.join(step.codes)}")
    for f in ECHOED + ["70"]:
        if f in req:
            need(resp.get(f) == req[f], f"DE{f} not echoed: sent {req[f]!r}, got {resp.get(f)!r}")
    for f in NEVER_ECHOED:
        need(f not in resp, f"DE{f} returned in the response ({resp.get(f)!r})")
    extra = [f for f in resp if f not in ("t", "p", "1") and f not in PROFILE]
    need(not extra, f"fields outside the corepay profile in the response: {extra}")
    if step.approval:
        if code == "00":
            v = resp.get("38", "")
            need(len(v) == 6 and all(ch.isalnum() or ch == " " for ch in v) and v.strip(),
                 f"approved without a 6-character DE38 (got {resp.get('38')!r})")
        else:
            need("38" not in resp, f"declined ({code}) but DE38 {resp.get('38')!r} is present")
    if step.same_as is not None:
        first = responses[step.same_as]
        need(raw == first, f"response differs from that of {step.same_as!r}:\n"
                           f"      first: {first!r}\n      now:   {raw!r}")
    if step.inquiry is not None and code == "00":
        bal, held = model[step.inquiry]
        amounts = parse_de54(resp.get("54"))
        need("02" in amounts, f"DE54 {resp.get('54')!r} has no available balance (type 02)")
        cur, avail = amounts["02"]
        need(cur == currency, f"DE54 available balance in currency {cur}, expected {currency}")
        need(avail == bal - held, f"DE54 available balance {avail}, expected {bal - held} "
                                  f"(balance {bal} - held {held})")
        if "01" in amounts:
            need(amounts["01"] == (currency, bal),
                 f"DE54 ledger balance {amounts['01']}, expected {bal}")


def describe(msg):
    """The fields of a message, for a failure report; DE2 and DE35 masked."""
    def show(k, v):
        if k in ("2", "35") and len(v) > 10:
            v = v[:6] + "*" * (len(v) - 10) + v[-4:]
        return f"{k}={v!r}"
    order = lambda kv: (kv[0] != "t", int(kv[0]) if kv[0].isdigit() else 0)
    return " ".join(show(k, v) for k, v in sorted(msg.items(), key=order) if k not in ("p", "1"))


def run_steps(peer, steps, model, currency):
    responses = {}
    for n, step in enumerate(steps, 1):
        req = step.request
        body = peer.encode(req)
        try:
            peer.send_raw(peer.frame(body))
            raw = peer.read_body()
        except (OSError, ValueError) as e:
            raise Failure(f"[{step.name}] no response: {e}")
        try:
            resp = peer.decode(raw)
        except iso8583.DecodeError as e:
            raise Failure(f"[{step.name}] pyiso8583 cannot decode the response {raw!r}: {e}")
        try:
            check(step, req, resp, raw, model, responses, currency)
        except Failure as e:
            raise Failure(f"[{step.name}] {e}\n      request:  {describe(req)}\n"
                          f"      response: {describe(resp)}")
        responses.setdefault(step.name, raw)
        if resp.get("39") == "00":
            for role, (db, dh) in step.effects.items():
                b, h = model[role]
                model[role] = (b + db, h + dh)
        extra = f" DE54={resp['54']}" if "54" in resp else ""
        extra += f" DE38={resp['38']}" if "38" in resp else ""
        print(f"ok {n:3} {step.name}: {req['t']} -> {resp['t']} DE39={resp.get('39')}{extra}",
              flush=True)


def run_pipelined(peer, sc, count):
    """`count` echo tests written in one go after a zero-length keep-alive frame; answers are
    matched by STAN, in whatever order they come."""
    reqs = {}
    data = peer.frame(b"")
    for _ in range(count):
        m = sc.echo("301")
        reqs[m["11"]] = m
        data += peer.frame(peer.encode(m))
    peer.send_raw(data)
    for _ in range(count):
        resp = peer.decode(peer.read_body())
        stan = resp.get("11")
        if stan not in reqs:
            raise Failure(f"[pipelined echo] answer with unknown or repeated STAN {stan!r}: "
                          f"{describe(resp)}")
        req = reqs.pop(stan)
        if resp.get("t") != "0810" or resp.get("39") != "00" or resp.get("7") != req["7"]:
            raise Failure(f"[pipelined echo] bad answer {describe(resp)}")
    print(f"ok     {count} pipelined 0800 echo tests after a keep-alive frame, matched by STAN",
          flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int)
    ap.add_argument("--header", choices=["binary2", "ascii4"], required=True)
    ap.add_argument("--bitmap", choices=["binary", "hex"], required=True)
    ap.add_argument("--merchant", required=True, help="DE42 of a provisioned merchant")
    ap.add_argument("--currency", default="978", help="DE49 of the merchant's currency")
    ap.add_argument("--card", action="append", default=[], metavar="ROLE=PAN:YYMM:BALANCE")
    ap.add_argument("--settlement", type=int, required=True,
                    help="balance of the merchant's settlement account, minor units")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--dry-run", action="store_true",
                    help="only encode every request and print its frame in hex")
    args = ap.parse_args()

    cards, model = {}, {"settlement": (args.settlement, 0)}
    for spec in args.card:
        role, rest = spec.split("=", 1)
        pan, yymm, balance = rest.split(":")
        cards[role] = Card(role, pan, yymm)
        model[role] = (int(balance), 0)
    missing = {"main", "poor", "expired", "blocked", "frozen"} - set(cards)
    if missing:
        ap.error(f"missing --card roles: {sorted(missing)}")

    if args.dry_run:
        peer = Peer.__new__(Peer)
        peer.header, peer.spec = args.header, make_spec(args.bitmap)
        for step in scenario(Scenario(args, cards)):
            frame = peer.frame(peer.encode(step.request))
            assert peer.decode(frame[2 if args.header == "binary2" else 4:]) is not None
            print(f"{step.name}\n  {frame.hex()}")
        return 0
    if args.port is None:
        ap.error("--port is required")
    print(f"pyiso8583 {getattr(iso8583, '__version__', '?')} from {iso8583.__file__}; "
          f"{args.host}:{args.port} header={args.header} bitmap={args.bitmap}", flush=True)
    try:
        peer = Peer(args.host, args.port, args.header, args.bitmap, args.timeout)
        sc = Scenario(args, cards)
        steps = scenario(sc)
        run_steps(peer, steps, model, args.currency)
        run_pipelined(peer, sc, 50)
    except Failure as e:
        print(f"FAIL {e}", flush=True)
        return 1
    except OSError as e:
        print(f"FAIL connection: {e}", flush=True)
        return 1
    expect = {role: {"balance": b, "held": h} for role, (b, h) in model.items()}
    print("EXPECT " + json.dumps(expect, sort_keys=True), flush=True)
    print(f"PASS all {len(steps) + 1} checks ({args.header}, {args.bitmap})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
