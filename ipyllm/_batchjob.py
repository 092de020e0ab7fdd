"""``map(..., via="batch")``: a map's rows sent through the provider's Batch API, or attached to the batch already
sending them.

The rows are prepared as live map prepares them (``_rows``: each row's messages, schema and settings; its cache key),
and the request file holds what the live calls would send (``_jobfile``), one line per distinct request, named by
its cache key (``custom_id``); rows answered in the cache are not sent. The map's key is a digest of every row's
cache key, so the same map in any kernel on the same ledger finds the batches recorded under it: while one of them
has not had its results taken, the map attaches to it instead of sending the rows again.

Before the upload the whole batch's cost is reserved at the batch price (every row's input and output cap, as
``_budget.Need`` sizes a live call): a durable hold in the ledger, expiring with the batch's 24-hour window, so every
kernel's budget check counts it. If a budget cannot pay for it, nothing is uploaded: one line names the figure and
the budget.

Two sessions starting the same map at the same instant, before either has recorded a batch, would both send it: so
a session claims the map in the ledger before it reserves or uploads anything (``_batchclaim``; one claim per map
key), and releases the claim once its batches are recorded or its submission failed. A session that finds the map
claimed waits for the claimer's batches and attaches to them, or takes over a claim released without batches or left
by a claimer that is gone.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone

from ipyllm import _litellm
from ipyllm._batchclaim import Claim
from ipyllm._batchcost import batch_price
from ipyllm._batchdata import Batch, MissingValue
from ipyllm._batchledger import BatchRecord
from ipyllm._batchlink import BatchLink, check_batchable
from ipyllm._budget import Need, Reservation, host_name, usd, user_name
from ipyllm._calls import Prepared
from ipyllm._cost import estimate
from ipyllm._engine import Reply
from ipyllm._jobfile import MAX_FILE_BYTES, MAX_REQUESTS, request_body, request_line, split
from ipyllm._litellm import resolve_provider
from ipyllm._notices import notice
from ipyllm._progress import Tally
from ipyllm._provider_batch import MapRows, ProviderBatch, pause
from ipyllm._rows import Rows
from ipyllm._session import Session
from ipyllm.errors import BudgetExceededError

__all__ = ["HOLD_SECONDS", "MapJob"]

#: A batch's hold lives for the provider's 24-hour window and an hour more (its results may be taken a little later).
HOLD_SECONDS = 25 * 3600


class MapJob:
    """One map sent via the Batch API: its rows prepared, its map key, and the batches it attaches to or submits."""

    #: The provider's limits per request file (tests lower them to see a map split).
    max_requests = MAX_REQUESTS
    max_bytes = MAX_FILE_BYTES

    def __init__(self, session: Session, rows: Rows, resume: bool) -> None:
        self.session = session
        self.rows = rows
        self.settings = settings = rows.settings
        # Refused before anything is sent: a provider litellm cannot batch.
        provider = check_batchable(settings.model, resolve_provider(settings.model, settings.base_url))
        self.link = BatchLink(settings, provider, sleep=session.client.sleep)
        self.resume = resume
        self.batch = Batch(f"{int(time.time() * 1000):x}"[-12:], rows.index, Tally(rows.total), rows.shape, session)
        self.batch.replies, self.batch.parsed, self.batch.row_errors = [None] * rows.total, [None] * rows.total, [None] * rows.total
        self.positions: dict[str, list[int]] = {}
        self.calls: dict[str, Prepared] = {}
        self.map_key = ""

    # -- the rows -------------------------------------------------------------------------------------------------------
    def prepare(self) -> list[str]:
        """Each row prepared and keyed; rows answered in the cache are answered now (``cached`` rows). The keys to send,
        in order (a request that several rows make is sent once)."""
        batch, everything = self.batch, set()
        record = self.session.recorder("map", batch=batch.id)
        pending: dict[str, None] = {}
        for position, call, problem, hit in self.rows.calls(record, self.session.records, self.resume, keyed=True):
            if isinstance(problem, MissingValue):
                batch.skipped(position, problem)
                continue
            if call is None or call.key is None:
                batch.failed(position, problem or "template")
                continue
            everything.add(call.key)
            cached = call.from_cache(hit) if hit is not None else None
            if isinstance(cached, Reply):
                batch.answered(position, cached)
                continue
            self.positions.setdefault(call.key, []).append(position)
            self.calls.setdefault(call.key, call)
            pending[call.key] = None
        self.map_key = hashlib.sha256("\n".join(sorted(everything)).encode()).hexdigest()
        return list(pending)

    # -- attach, or submit -------------------------------------------------------------------------------------------------
    def start(self) -> ProviderBatch:
        """The batches of this map: those recorded and not yet taken (attached to), and new ones for the rows they do not
        cover."""
        pending = self.prepare()
        parts = self.attach_or_submit(pending) if pending else []
        rows = MapRows(self.batch, self.positions, self.calls, self.rows.shape)
        return ProviderBatch(self.session, self.link, parts, rows)

    def running(self, pending: list[str]) -> tuple[list[BatchRecord], list[str]]:
        """This map's recorded batches whose results are not taken yet, and the keys of ``pending`` none of them covers."""
        running = [record for record in self.session.records.batches(map_key=self.map_key) if not record.done]
        covered = {key for record in running for key in record.keys}
        return running, [key for key in pending if key not in covered]

    def attach_or_submit(self, pending: list[str]) -> list[BatchRecord]:
        """Attach to the map's running batches; submit the rows they do not cover under a claim on the map, so that of
        sessions starting it at once one submits. The others wait for the claimer's batches (looking again as a batch's
        waiting does) and attach; a claim released without batches (a refusal, an upload error), or stale (its claimer
        gone: ``_batchclaim.is_stale``), is theirs to take. The wait ends there, at ``STALE_SECONDS`` at most."""
        records, settings = self.session.records, self.settings
        wait, waited_for = settings.batch_poll_min_wait, None
        while True:
            running, to_send = self.running(pending)
            if not to_send:
                break
            claim = Claim(self.map_key, self.session.id, settings.user or user_name(), host_name(), rows=len(to_send))
            holder = records.batch_claim(claim)
            if holder is None:
                try:
                    running, to_send = self.running(pending)  # what a claimer recorded just before it let go
                    self.say_attached(running)
                    return running + (self.submit(to_send) if to_send else [])
                finally:
                    records.batch_unclaim(claim)
            if waited_for != holder.id:
                waited_for = holder.id
                notice(
                    f"waiting for session {holder.session} ({holder.user} on {holder.host}, pid {holder.pid}), which is sending "
                    f"this map's {holder.rows:,} rows as a provider batch: attaching to it once it is recorded"
                )
            pause(wait)
            wait = min(settings.batch_poll_max_wait, max(wait * 1.5, 0.001))
        self.say_attached(running)
        return running

    @staticmethod
    def say_attached(running: list[BatchRecord]) -> None:
        if running:
            first = running[0]
            when = first.submitted.astimezone().strftime("%Y-%m-%d %H:%M")
            notice(
                f"attached to provider batch {', '.join(r.id for r in running)} ({first.status}), sent {when} by {first.user} "
                f"from session {first.session}: its rows are not sent again"
            )

    def need(self, keys: list[str]) -> Need:
        """What the batch may cost at the batch price: every row's prompt, and the output price of one token on every row
        (so ``Need.fit`` gives the output cap each line carries, and holds the input plus that cap on every row)."""
        settings, provider = self.settings, self.link.provider
        tokens, ceiling = 0, None
        for key in keys:
            guess = estimate(settings, self.calls[key].payload)
            tokens += guess.prompt_tokens
            ceiling = guess.max_tokens or guess.model_max_output
        extra_cap = self.rows.extra.get("max_completion_tokens")
        user_cap = settings.max_tokens or (extra_cap if isinstance(extra_cap, int) and not isinstance(extra_cap, bool) else None)
        input_usd = batch_price(settings, settings.model, provider, tokens, 0).usd
        per_token = batch_price(settings, settings.model, provider, 0, 1_000_000).usd / 1_000_000
        return Need(input_usd, per_token * len(keys), user_cap, user_cap or ceiling)

    def reserve(self, keys: list[str]) -> Reservation:
        """Hold the batch's estimated cost in the ledger until its results are taken; or refuse it, before any upload."""
        settings, provider = self.settings, self.link.provider
        known: list[Need] = []

        def need() -> Need:
            if not known:
                known.append(self.need(keys))
            return known[0]

        record = self.session.recorder("map", batch=self.batch.id)
        try:
            return self.session.budgets.reserve(
                settings, "chat", settings.model, provider, need, record, quiet=True, lifetime=HOLD_SECONDS, durable=True
            )
        except BudgetExceededError as error:
            refused = error
        message = refused.message
        room = refused.refusal
        if room is not None and known:
            wanted = known[0]
            full = wanted.held_input + (wanted.ceiling or wanted.minimum_tokens) * wanted.output_cost_per_token
            message = (
                f"the batch of {len(keys):,} rows was not sent (nothing uploaded): at the batch price it is estimated at "
                f"{usd(full)} with each row's output cap, and needs at least {usd(wanted.minimum)} (the input and "
                f"{wanted.minimum_tokens} output tokens a row), more than {room.limit.setting} leaves "
                f"({usd(max(room.left, 0.0))} of {usd(room.limit.limit, limit=True)}): raise {room.limit.setting}, or send fewer rows"
            )
        if refused.usage is not None:
            refused.usage.error = f"BudgetExceededError: {message}"
            self.session.budgets.refused(refused, record)
        raise BudgetExceededError(message, usage=refused.usage)

    def submit(self, keys: list[str]) -> list[BatchRecord]:
        """Reserve, build the request files, upload each and create its batch; each batch recorded as it is created."""
        settings, link = self.settings, self.link
        reservation = self.reserve(keys)
        reservation.settled = True  # the hold outlives this call: whoever takes the batch's results ends it
        hold = reservation.hold
        model = _litellm.batch_model(settings.model, settings.base_url)
        lines = (
            (key, request_line(key, request_body(settings, model, self.calls[key].payload, self.rows.extra, reservation.cap)))
            for key in keys
        )
        files = list(split(lines, self.max_requests, self.max_bytes))
        user, host = self.settings.user or user_name(), host_name()
        created: list[BatchRecord] = []
        try:
            for part, (part_keys, data) in enumerate(files, start=1):
                file_id = link.call(
                    "uploading the batch's request file", _litellm.create_file, f"ipyllm-{self.map_key[:12]}-{part}.jsonl", data
                )
                metadata = {"ipyllm_map": self.map_key[:32], "part": f"{part}/{len(files)}"}
                seen = link.call("creating the batch", _litellm.create_batch, file_id, model, metadata)
                record = BatchRecord(
                    id=str(seen.id),
                    provider=link.provider,
                    model=settings.model,
                    map_key=self.map_key,
                    keys=tuple(part_keys),
                    input_file_id=file_id,
                    status=str(getattr(seen, "status", None) or "validating"),
                    submitted=datetime.now(timezone.utc),
                    session=self.session.id,
                    user=user,
                    host=host,
                    total=len(part_keys),
                    hold_id=hold.id if hold is not None else None,
                    estimate_usd=hold.amount if hold is not None else None,
                    base_url=settings.base_url,
                    output_cap=reservation.cap,
                    part=part,
                    parts=len(files),
                )
                self.session.records.batch_add(record)
                created.append(record)
        finally:
            if not created and hold is not None:  # nothing went out: the hold ends now
                reservation.settled = False
                reservation.release()
        return created
