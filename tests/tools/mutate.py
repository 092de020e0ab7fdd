"""Mutation check: break one promised behaviour at a time in a copy of ipyllm and see whether the tests notice.

Each mutation is a small source substitution (file, old text, new text). For each, the repository's
``ipyllm/``, ``tests/``, ``notebooks/`` and ``pyproject.toml`` are copied to a temporary directory, the
substitution is applied there, and the tests relevant to it run against the copy (``PYTHONPATH`` and the
working directory point at the copy, so kernels the tests start import the mutated package too). The
mutation is

- ``killed`` when a test fails (the suite catches the broken behaviour),
- ``SURVIVED`` when every selected test passes (a gap in the suite),
- ``timeout`` when the tests ran past the time budget (counted as caught, as mutation tools do),
- ``not applicable`` when the old text is not in the file (the code changed: e.g. another branch has not
  been merged yet, or has been and the mutation needs updating).

Usage (from the repository root)::

    python tests/tools/mutate.py                    # every mutation
    python tests/tools/mutate.py --only daily-last-24h --only cache-key-no-base-url
    python tests/tools/mutate.py --list             # names, areas and what each breaks
    python tests/tools/mutate.py --timeout 300      # seconds per mutation (default 240)

Not part of the normal test run (pytest does not collect ``tests/tools``). Exit status 1 when a mutation
survived.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("ipyllm", "tests", "notebooks", "pyproject.toml")


@dataclass(frozen=True)
class Mutation:
    """One deliberate break: replace ``old`` by ``new`` in ``file`` (exactly once unless ``count`` says otherwise)."""

    name: str
    area: str
    breaks: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    #: ``old`` is a regular expression (for code whose exact text is not known yet).
    regex: bool = False
    count: int = 1
    pytest_args: tuple[str, ...] = field(default_factory=tuple)


def m(name: str, area: str, breaks: str, file: str, old: str, new: str, *tests: str, **options: object) -> Mutation:
    return Mutation(name, area, breaks, file, old, new, tuple(tests), **options)  # type: ignore[arg-type]


MUTATIONS: list[Mutation] = [
    # -- retries -----------------------------------------------------------------------------------------
    m(
        "retries-off",
        "retries",
        "no retry at all (one attempt)",
        "ipyllm/_retry.py",
        "stop=stop_after_attempt(attempts),",
        "stop=stop_after_attempt(1),",
        "tests/unit/test_engine.py::test_transient_faults_are_retried_with_one_request_per_attempt",
        "tests/unit/test_retry.py",
    ),
    m(
        "429-not-retried",
        "retries",
        "rate limits (429) are not retried",
        "ipyllm/_retry.py",
        "RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})",
        "RETRY_STATUS = frozenset({408, 500, 502, 503, 504})",
        "tests/unit/test_retry.py",
        "tests/unit/test_engine.py",
    ),
    m(
        "sdk-retries-on",
        "retries",
        "the OpenAI SDK retries beneath ipyllm (max_retries=2)",
        "ipyllm/_engine.py",
        '"max_retries": 0}',
        '"max_retries": 2}',
        "tests/unit/test_engine.py::test_transient_faults_are_retried_with_one_request_per_attempt",
        "tests/unit/test_retry.py",
    ),
    m(
        "embeddings-not-retried",
        "retries",
        "embeddings get no retries",
        "ipyllm/_engine.py",
        'call = self._begin("embedding", model, settings, target)',
        'call = self._begin("embedding", model, __import__("dataclasses").replace(settings, num_retries=0), target)',
        "tests/unit/test_engine.py -k embed",
    ),
    m(
        "interrupt-not-recorded",
        "retries",
        "an interrupted call is recorded as an error",
        "ipyllm/_callrow.py",
        'row.status, row.error = "interrupted",',
        'row.status, row.error = "error",',
        "tests/unit/test_retry.py -k interrupt",
        "tests/kernel/test_magics.py -k interrupting",
    ),
    m(
        "retry-first-failure-sent-again",
        "retries",
        "a first attempt that failed is sent again as the policy's first attempt (one wait and one note short)",
        "ipyllm/_retry.py",
        "            raise first.pop()\n        return attempt()",
        "            first.pop()\n        return attempt()",
        "tests/unit/test_retry.py",
    ),
    m(
        "retry-async-first-failure-sent-again",
        "retries",
        "an async call's failed first attempt is sent again as the policy's first attempt",
        "ipyllm/_retry.py",
        "            raise first.pop()\n        return await attempt()",
        "            first.pop()\n        return await attempt()",
        "tests/unit/test_retry.py",
    ),
    m(
        "retry-policy-built-for-every-call",
        "retries",
        "tenacity is set up for every call, before its first attempt (0.1 ms of the kernel's time a call)",
        "ipyllm/_retry.py",
        "    try:\n        return attempt()\n",
        "    retrying(settings.num_retries, settings.retry_min_wait, settings.retry_max_wait)\n    try:\n        return attempt()\n",
        "tests/unit/test_retry.py",
    ),
    m(
        "batch-api-not-retried",
        "retries",
        "the Files and Batches calls of a provider batch are never retried",
        "ipyllm/_batchlink.py",
        "retried(attempt, settings,",
        'retried(attempt, __import__("dataclasses").replace(settings, num_retries=0),',
        "tests/batch/test_provider_batch.py",
    ),
    # -- Retry-After ------------------------------------------------------------------------------------
    m(
        "retry-after-ignored",
        "Retry-After",
        "the provider's Retry-After is ignored",
        "ipyllm/_retry.py",
        "            wait = max(wait, hinted)",
        "            pass",
        "tests/unit/test_retry.py",
        "tests/unit/test_engine.py -k transient",
    ),
    m(
        "retry-after-uncapped",
        "Retry-After",
        "Retry-After is not capped at retry_max_wait",
        "ipyllm/_retry.py",
        "return min(self.max_wait, max(self.min_wait, wait))",
        "return max(self.min_wait, wait)",
        "tests/unit/test_retry.py",
    ),
    # -- jitter / backoff -------------------------------------------------------------------------------
    m(
        "constant-wait",
        "jitter",
        "a constant wait of retry_min_wait",
        "ipyllm/_retry.py",
        "wait = self.draw(self.min_wait, self.cap(retry_state.attempt_number))",
        "wait = self.min_wait",
        "tests/unit/test_retry.py",
    ),
    m(
        "no-jitter",
        "jitter",
        "exponential backoff without jitter",
        "ipyllm/_retry.py",
        "wait = self.draw(self.min_wait, self.cap(retry_state.attempt_number))",
        "wait = self.cap(retry_state.attempt_number)",
        "tests/unit/test_retry.py",
    ),
    m(
        "jitter-without-growth",
        "jitter",
        "random waits between the bounds that do not grow",
        "ipyllm/_retry.py",
        "wait = self.draw(self.min_wait, self.cap(retry_state.attempt_number))",
        "wait = self.draw(self.min_wait, self.max_wait)",
        "tests/unit/test_retry.py",
    ),
    # -- key masking and redaction ----------------------------------------------------------------------
    m(
        "repr-reveals-key",
        "key masking",
        "the key handed to litellm shows itself in reprs (frame locals, argument dicts)",
        "ipyllm/_secrets.py",
        "return repr(_mask(str.__str__(self)))",
        "return str.__repr__(self)",
        "tests/unit/test_secrets.py",
        "tests/unit/test_config.py",
    ),
    m(
        "secret-text-is-the-key",
        "key masking",
        "the Secret's text is the key (json.dumps, f-strings show it)",
        "ipyllm/_secrets.py",
        "secret = super().__new__(cls, cls._masked_text(text))",
        "secret = super().__new__(cls, text)",
        "tests/unit/test_secrets.py",
        "tests/unit/test_config.py",
    ),
    m(
        "mask-shows-more",
        "key masking",
        "the masked key shows 12 characters instead of 4",
        "ipyllm/_secrets.py",
        'return "****" + plain[-4:] if len(plain) >= 16 else "****"',
        'return "****" + plain[-12:]',
        "tests/unit/test_magics.py -k llm_config",
        "tests/unit/test_config.py",
    ),
    m(
        "show-reveals-key",
        "key masking",
        "%llm_config --show prints the key",
        "ipyllm/_assignments.py",
        'shown = "unset" if value is None else repr(value) if not isinstance(value, str) or name == "api_key" else value',
        'shown = "unset" if value is None else value.reveal() if name == "api_key" '
        "else repr(value) if not isinstance(value, str) else value",
        "tests/unit/test_magics.py -k llm_config",
        "tests/kernel/test_magics.py -k show_masks",
    ),
    m(
        "exact-key-redaction-removed",
        "redaction",
        "the session's exact key is not removed from provider messages",
        "ipyllm/_explain.py",
        "secrets = [str.__str__(settings.api_key.reveal())] if settings is not None and settings.api_key else []",
        "secrets = []",
        "tests/unit/test_engine.py -k key",
        "tests/unit/test_secrets.py",
    ),
    m(
        "key-shape-redaction-removed",
        "redaction",
        "key-shaped strings are not removed from provider messages",
        "ipyllm/_explain.py",
        'return _KEY_PATTERN.sub(r"\\1****", text)',
        "return text",
        "tests/unit/test_engine.py -k key",
    ),
    # -- ledger durability ------------------------------------------------------------------------------
    m(
        "ledger-not-written",
        "ledger",
        "rows are not written to the ledger file",
        "ipyllm/_records.py",
        "self.using_store(lambda store: store.append(row, release))",
        "None",
        "tests/unit/test_sqlite.py",
        "tests/kernel/test_ledger.py -k killed",
    ),
    m(
        "ledger-not-committed",
        "ledger",
        "inserts are never committed (an implicit transaction stays open)",
        "ipyllm/_sqlfile.py",
        "isolation_level=None",
        'isolation_level="DEFERRED"',
        "tests/unit/test_sqlite.py",
        "tests/kernel/test_ledger.py -k killed",
    ),
    # -- budgets ----------------------------------------------------------------------------------------
    m(
        "session-budget-off",
        "budgets",
        "budget_usd is never checked",
        "ipyllm/_budget.py",
        "        if settings.budget_usd is None:\n            return []",
        "        if True:\n            return []",
        "tests/unit/test_budget.py",
    ),
    m(
        "budget-ignores-estimate",
        "budgets",
        "a call is refused only once spend already passed the limit",
        "ipyllm/_budget.py",
        "        if cap < self.minimum_tokens:\n            return None",
        "        if left < 0:\n            return None",
        "tests/unit/test_budget.py",
    ),
    m(
        "daily-last-24h",
        "budgets (midnight)",
        "the daily budget counts the last 24 hours",
        "ipyllm/_budget.py",
        "return datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)",
        'return datetime.now().astimezone() - __import__("datetime").timedelta(days=1)',
        "tests/unit/test_budget.py -k daily",
    ),
    m(
        "daily-utc-midnight",
        "budgets (midnight)",
        "the daily budget counts since UTC midnight, not local",
        "ipyllm/_budget.py",
        "return datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)",
        'return datetime.now(__import__("datetime").timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)',
        "tests/unit/test_budget.py -k daily",
    ),
    m(
        "daily-this-session-only",
        "budgets",
        "the daily budget ignores other sessions' rows (this session's memory only)",
        "ipyllm/_budget.py",
        "        store = self._store()\n        if store is not None:\n            try:\n                return store.reserve",
        "        store = None\n        if store is not None:\n            try:\n                return store.reserve",
        "tests/unit/test_budget.py -k daily",
    ),
    m(
        "unpriced-silently-free",
        "budgets (unpriced)",
        "with a budget, an unpriced model counts as free, silently",
        "ipyllm/_budget.py",
        "        if not wanted.priced:",
        "        if False:",
        "tests/unit/test_budget.py -k unpriced",
    ),
    m(
        "session-holds-ignored",
        "budgets (reservations)",
        "calls in flight hold nothing against budget_usd (only finished rows count)",
        "ipyllm/_budget.py",
        "                sum(h.amount for h in self._holds.values()),\n                len(self._holds),",
        "                0.0,\n                0,",
        "tests/unit/test_budget.py -k threads or hold",
    ),
    m(
        "ledger-holds-ignored",
        "budgets (reservations)",
        "holds in the ledger do not count: kernels sharing a daily budget see only finished rows",
        "ipyllm/_sqlite.py",
        "        return Headroom(limit, float(spent[0]), float(held), int(holds))",
        "        return Headroom(limit, float(spent[0]), 0.0, 0)",
        "tests/unit/test_budget.py -k threads or hold or local_midnight",
        "tests/kernel/test_ledger.py -k two_kernels",
    ),
    # -- cache ------------------------------------------------------------------------------------------
    m(
        "cache-key-no-base-url",
        "cache",
        "the cache key ignores base_url",
        "ipyllm/_calls.py",
        '"base_url": settings.base_url,',
        '"base_url": None,',
        "tests/unit/test_calls.py",
    ),
    m(
        "cache-key-no-temperature",
        "cache",
        "the cache key ignores the temperature",
        "ipyllm/_calls.py",
        '"temperature": settings.temperature,',
        '"temperature": None,',
        "tests/unit/test_calls.py -k misses",
    ),
    # -- chat -------------------------------------------------------------------------------------------
    m(
        "chat-no-history",
        "chat",
        "--chat sends no history",
        "ipyllm/_magics.py",
        "history = conversation.history(key, self.run) if args.chat else []",
        "history = []",
        "tests/unit/test_chat.py",
    ),
    m(
        "chat-rerun-duplicates",
        "chat",
        "a re-run cell appends its turn again",
        "ipyllm/_chat.py",
        "self.turns = [t for t in self.turns if not self._stale(t, key, run)]",
        "self.turns = list(self.turns)",
        "tests/unit/test_chat.py",
    ),
    # -- picker binding ---------------------------------------------------------------------------------
    m(
        "picker-deaf-to-config",
        "picker",
        "the picker does not follow configuration changes",
        "ipyllm/_widget.py",
        "config.observe(self._on_config, names=list(WATCHED))",
        "None",
        "tests/unit/test_widget.py",
    ),
    m(
        "picker-does-not-write",
        "picker",
        "the picker's fields do not reach the configuration",
        "ipyllm/_widget.py",
        "setattr(config, name, value)",
        "None",
        "tests/unit/test_widget.py",
    ),
    m(
        "picker-keeps-key",
        "picker",
        "the typed key stays in the widget's state",
        "ipyllm/_widget.py",
        'self.api_key.value = ""\n        if self._apply',
        "pass\n        if self._apply",
        "tests/unit/test_widget.py -k key",
    ),
    m(
        "picker-close-leaks",
        "picker",
        "closing a picker leaves its observer on the configuration",
        "ipyllm/_widget.py",
        "config.unobserve(self._on_config, names=list(WATCHED))",
        "None",
        "tests/unit/test_widget.py -k clos",
    ),
    # -- unload / load ----------------------------------------------------------------------------------
    m(
        "unload-clears-chat",
        "unload",
        "%unload_ext forgets the --chat conversation",
        "ipyllm/_magics.py",
        "    magics = _loaded.pop(id(shell), None)",
        "    conversation.clear()\n    magics = _loaded.pop(id(shell), None)",
        "tests/unit/test_magics.py -k unload",
    ),
    m(
        "unload-drops-rows",
        "unload",
        "%unload_ext drops the usage rows",
        "ipyllm/_magics.py",
        "    magics = _loaded.pop(id(shell), None)",
        "    _api.session.ledger = type(_api.session.ledger)()\n    magics = _loaded.pop(id(shell), None)",
        "tests/unit/test_magics.py -k unload",
    ),
    m(
        "warm-up-blocks",
        "load",
        "%load_ext imports litellm before returning",
        "ipyllm/_magics.py",
        "    _loaded[id(shell)] = magics\n    warm_up()",
        "    _loaded[id(shell)] = magics\n    from ipyllm._litellm import load_litellm\n\n    load_litellm()",
        "tests/unit/test_package.py -k load_ext",
    ),
    # -- speed without loss --------------------------------------------------------------------------------
    m(
        "litellm-logging-always",
        "speed",
        "ipyllm's calls keep litellm's logging payload although no callback reads it",
        "ipyllm/_litellm.py",
        "    return _internal(is_internal_call)",
        "    return nullcontext()",
        "tests/unit/test_litellm.py",
    ),
    m(
        "litellm-logging-never",
        "speed",
        "a litellm callback the user registered no longer sees ipyllm's calls",
        "ipyllm/_litellm.py",
        "    if litellm is None or has_callbacks(litellm):",
        "    if litellm is None:",
        "tests/unit/test_litellm.py",
    ),
    m(
        "writer-drops-cache",
        "batch",
        "the batch writer commits the rows but not the answers a resume needs",
        "ipyllm/_writer.py",
        "                entries = [item[1] for item in items if item[0] is None]",
        "                entries = []",
        "tests/batch/test_map.py -k rerun",
    ),
    m(
        "late-429-another-pause",
        "batch",
        "a 429 to a request sent before a rate-limit pause, back after it ended, halves the calls in flight again",
        "ipyllm/_pace.py",
        "if now >= self.resume_at and sent_at >= self.paused_at:",
        "if now >= self.resume_at:",
        "tests/unit/test_pace.py",
    ),
    m(
        "helper-ignores-cancel",
        "helpers",
        "a cancelled attempt keeps running in the helper process",
        "ipyllm/_helpers.py",
        "            task.cancel()",
        "            pass",
        "tests/batch/test_helpers.py",
    ),
    m(
        "helper-loses-headers",
        "helpers",
        "an exception from a helper comes back without its status code and Retry-After",
        "ipyllm/_helpers.py",
        "        exc.__dict__.update(state)",
        "        pass",
        "tests/batch/test_helpers.py",
    ),
    m(
        "helpers-never-used",
        "helpers",
        "processes=2 runs every attempt in this process",
        "ipyllm/_helpers.py",
        "        if helper is not None and (helper.in_flight < self.in_flight or not litellm_loaded()):",
        "        if False:",
        "tests/batch/test_helpers.py",
    ),
    m(
        "helpers-not-started-early",
        "helpers",
        "%load_ext starts no helper: the first map waits for its litellm import",
        "ipyllm/_helpers.py",
        "    start_for(config.processes)\n",
        "    pass\n",
        "tests/batch/test_helpers.py",
    ),
    m(
        "helpers-not-started-when-raised",
        "helpers",
        "raising the processes setting starts no helper: the first map waits for its litellm import",
        "ipyllm/_helpers.py",
        '    start_for(change["new"])\n',
        "    pass\n",
        "tests/batch/test_helpers.py",
    ),
    m(
        "processes-setting-ignored",
        "helpers",
        "a map that names no processes runs in one process whatever the processes setting says",
        "ipyllm/_batch.py",
        '    return session.config.snapshot().processes if processes is None else _whole("processes", processes)',
        '    return 1 if processes is None else _whole("processes", processes)',
        "tests/batch/test_helpers.py",
    ),
    m(
        "helper-close-waits-for-import",
        "helpers",
        "closing a helper still importing litellm waits for it: a script or kernel exit right after %load_ext stalls",
        "ipyllm/_helpers.py",
        "        if not self.ready.is_set():\n            self.process.kill()\n",
        "",
        "tests/batch/test_helpers.py",
    ),
    m(
        "warm-up-failure-raises",
        "helpers",
        "a warm-up cut short (a script ending during litellm's import) prints a traceback from its thread",
        "ipyllm/_litellm.py",
        "    try:\n        litellm = load_litellm(count_tokens=False)\n    except Exception:\n        return\n",
        "    litellm = load_litellm(count_tokens=False)\n",
        "tests/unit/test_litellm.py",
    ),
    # -- issue 17: input checks
    m(
        "config-typos-allowed",
        "input checks",
        "config.budget = 0 (for budget_usd) is kept as a plain attribute, and the limit never set",
        "ipyllm/_config.py",
        '        if not name.startswith("_") and not hasattr(type(self), name):\n            raise unknown_setting(name)',
        '        if not name.startswith("_") and not hasattr(type(self), name):\n            pass',
        "tests/unit/test_validate.py -k config_attribute or every_llmconfig",
    ),
    m(
        "map-keywords-unchecked",
        "input checks",
        "map(..., max_token=5) sends the typo with every row, billed",
        "ipyllm/_rows.py",
        "        if extra:  # as complete() checks them",
        "        if False:  # as complete() checks them",
        "tests/unit/test_validate.py -k unknown_keywords",
    ),
    m(
        "missing-cells-sent",
        "input checks",
        "rows whose template fields are None / NaN / NA / NaT are sent as 'say None'",
        "ipyllm/_rows.py",
        'self.missing_fields = template_fields(template) if isinstance(template, str) and missing == "skip" else ()',
        "self.missing_fields = ()",
        "tests/unit/test_validate.py -k missing",
    ),
    m(
        "schema-metaschema-skipped",
        "input checks",
        "an invalid JSON schema is sent and paid for, then jsonschema's SchemaError comes out",
        "ipyllm/_schema.py",
        "        jsonschema.validators.validator_for(schema).check_schema(schema)\n",
        "        pass\n",
        "tests/unit/test_validate.py -k schema",
    ),
    m(
        "infinite-budget-accepted",
        "input checks",
        "budget_usd = inf is accepted: a limit that looks set and is none",
        "ipyllm/_config.py",
        "        if not math.isfinite(number):",
        "        if False:",
        "tests/unit/test_validate.py -k infinite or infinity",
    ),
    m(
        "price-alias-unchecked",
        "input checks",
        "prices={'m': 'no-such-base-model'} is accepted and the model stays unpriced without a word",
        "ipyllm/_config.py",
        "            if not priceable(price):",
        "            if False:",
        "tests/unit/test_validate.py -k price_alias",
    ),
    m(
        "price-alias-bundled-only",
        "input checks",
        "aliases are checked against the bundled price map even once litellm (and its model_cost) is imported",
        "ipyllm/_pricemap.py",
        "    if isinstance(model_cost, dict) and model_cost:",
        "    if False:",
        "tests/unit/test_validate.py -k aliases",
    ),
    # -- issue 17: empty answers and models ---------------------------------------------------------------
    m(
        "empty-answer-cached",
        "empty answers",
        "complete, acomplete and map cache an empty answer again (one cache path serves all three)",
        "ipyllm/_calls.py",
        "        if not result.text or result.cut:\n            return None",
        "        if result.cut:\n            return None",
        "tests/unit/test_answers.py -k cached or map",
    ),
    m(
        "streamed-empty-stop-is-broken",
        "empty answers",
        "a streamed empty answer with finish_reason stop is taken for a broken stream (asked again, then an error)",
        "ipyllm/_attempt.py",
        "        if response is not None and (finish is not None or has_answer(response)):",
        "        if has_answer(response):",
        "tests/unit/test_answers.py -k stop or magic",
    ),
    m(
        "errors-name-the-provider",
        "empty answers",
        "errors name the provider although base_url is set",
        "ipyllm/_answers.py",
        "    return base_url or provider or",
        "    return provider or base_url or",
        "tests/unit/test_answers.py -k name or filter or re_ask",
    ),
    m(
        "models-reads-catalogue",
        "models",
        "models() with base_url reads litellm's catalogue first (importing litellm)",
        "ipyllm/_models.py",
        "    _strings(filter, provider)\n",
        "    _strings(filter, provider)\n    catalogue()\n",
        "tests/unit/test_models.py -k fresh",
    ),
    m(
        "models-prices-import-litellm",
        "models",
        "a base_url server's prices (and price aliases) come from litellm's own price map, imported for them",
        "ipyllm/_pricemap.py",
        '    litellm = sys.modules.get("litellm")',
        '    litellm = __import__("litellm")',
        "tests/unit/test_models.py -k fresh",
    ),
    m(
        "models-takes-non-strings",
        "models",
        "models(123) / models(provider=5) are not refused before asking the server",
        "ipyllm/_models.py",
        "    _strings(filter, provider)\n    words",
        "    words",
        "tests/unit/test_models.py -k refuses",
    ),
    # -- issue 17: ledger faults ------------------------------------------------------------------------
    m(
        "ledger-vanish-unchecked",
        "ledger faults",
        "a ledger file deleted or replaced while open is not noticed: rows go to the unlinked file and vanish",
        "ipyllm/_sqlfile.py",
        "        if connection is not None and not self.away and self.at_path():",
        "        if connection is not None and not self.away:",
        "tests/unit/test_sqlfile.py -k deleted or replaced",
    ),
    m(
        "spool-never-written-back",
        "ledger faults",
        "rows spooled while the ledger could not be written are never written to it",
        "ipyllm/_sqlfile.py",
        "        while batch := spool.peek():",
        "        while batch := []:",
        "tests/unit/test_sqlfile.py -k unwritable or killed or outage",
    ),
    m(
        "cache-not-spooled",
        "ledger faults",
        "answers that arrive while the ledger cannot be written are not spooled: a second run sends them again",
        "ipyllm/_sqlfile.py",
        "            self.spool.put_many(entries, cache)",
        "            self.spool.put_many(entries, ())",
        "tests/unit/test_sqlfile.py -k unwritable or cache_lookups or killed",
    ),
    m(
        "deadlock-taken-for-an-outage",
        "ledger faults",
        "a batch PostgreSQL rolled back to end a deadlock with another kernel's is taken for an outage: a notice, rows late",
        "ipyllm/_pglink.py",
        'return getattr(error, "sqlstate", None) in _ROLLED_BACK',
        "return False",
        "tests/postgres/test_postgres.py -k deadlock",
    ),
    m(
        "spool-drain-deadlock-an-outage",
        "ledger faults",
        "a batch of the spool rolled back for a deadlock is taken for an outage, by the writer and by a new kernel's first connection",
        "ipyllm/_pgwriter.py",
        "                self._again(write)",
        "                write()",
        "tests/postgres/test_postgres.py -k deadlock",
    ),
    m(
        "wal-switch-not-retried",
        "ledger faults",
        "two kernels opening a new ledger at once: one gets 'database is locked' and takes it for unusable",
        "ipyllm/_spool.py",
        '            if "locked" not in str(error) or time.monotonic() >= deadline:',
        "            if True:",
        "tests/unit/test_sqlfile.py -k same_moment",
    ),
    # -- issue 17: budgets that assume nothing ----------------------------------------------------------------
    m(
        "budget-cap-not-sent",
        "budgets",
        "the output cap a budget derives is not sent: a long reply runs past the budget",
        "ipyllm/_engine.py",
        "    if cap is not None:\n        # A budget's output cap",
        "    if False:\n        # A budget's output cap",
        "tests/unit/test_budget.py -k long_reply",
    ),
    m(
        "budget-cap-not-derived",
        "budgets",
        "the cap is the model's maximum whatever the budget leaves",
        "ipyllm/_budget.py",
        "        cap = affordable if self.ceiling is None else min(self.ceiling, affordable)",
        "        cap = affordable if self.ceiling is None else self.ceiling",
        "tests/unit/test_budget.py -k long_reply",
    ),
    m(
        "budget-hold-not-the-cap",
        "budgets",
        "a call holds its input and 16 output tokens, not the reply its cap allows: calls at once pass the budget",
        "ipyllm/_budget.py",
        "        return self.held_input + cap * rate, cap",
        "        return self.held_input + self.minimum_tokens * rate, cap",
        "tests/unit/test_budget.py -k threads",
    ),
    m(
        "budget-map-stops-at-once",
        "budgets",
        "a map stops at the first refusal while its own calls in flight hold the room",
        "ipyllm/_batchrun.py",
        "                if await self.flight.room_may_come(error.refusal, need()):",
        "                if False:",
        "tests/batch/test_budget.py -k map_over_long",
    ),
    m(
        "budget-held-shown-as-spent",
        "budgets",
        "the refusal line counts the holds of calls in flight as spent",
        "ipyllm/_budget.py",
        '        f"budget: spent {usd(room.spent)}{held}',
        '        f"budget: spent {usd(room.spent + room.held)}{held}',
        "tests/unit/test_budget.py -k refusal_line",
    ),
    # -- issue 18: one house ------------------------------------------------------------------------------------
    m(
        "map-key-last-message",
        "cache",
        "calls (map's rows too) key the cache on the last message alone: another system prompt or schema is answered from the cache",
        "ipyllm/_calls.py",
        "key = cache_key(kind, settings, payload, extra) if keyed else None",
        "key = cache_key(kind, settings, payload[-1:], extra) if keyed else None",
        "tests/unit/test_session.py -k map_run_again",
    ),
    m(
        "map-entry-without-provider",
        "cache",
        "a cache entry leaves out the provider: a hit after map imports litellm to resolve it",
        "ipyllm/_calls.py",
        '"completion_tokens": row.completion_tokens, "provider": row.provider}',
        '"completion_tokens": row.completion_tokens}',
        "tests/unit/test_session.py -k without_litellm",
    ),
    m(
        "using-changes-everyone",
        "configuration",
        "config.using() changes the shared configuration, which other threads see",
        "ipyllm/_config.py",
        "        token = _overlays.set({**overlays, id(self): merged})",
        "        token = _overlays.set({**overlays, id(self): merged})\n        self.update(**values)",
        "tests/unit/test_session.py -k using",
    ),
    # -- issue 18: typed locations -----------------------------------------------------------------------------
    m(
        "one-slash-url-is-a-file",
        "ledger location",
        "a one-slash postgresql:/ada:pw@db/team (or mysql://...) is taken as a file: made in the working directory, password in its path",
        "ipyllm/_locations.py",
        '        raise LocationError(text)  # one slash, a misspelt or another scheme, "usage:1.sqlite": never a file',
        '        if not text[scheme.end() :].startswith("/"):\n            raise LocationError(text)',
        "tests/unit/test_locations.py -k typo",
    ),
    m(
        "secret-equals-its-mask",
        "key masking",
        "a Secret equals its masked text (str.__eq__ answers) while their hashes differ",
        "ipyllm/_secrets.py",
        "        return isinstance(other, Secret) and str.__eq__(self._key, other._key)",
        "        return str.__eq__(self._key, other._key) if isinstance(other, Secret) else NotImplemented",
        "tests/unit/test_secrets.py",
    ),
    m(
        "secret-hash-disagrees",
        "key masking",
        "equal Secrets hash differently: a set or dict keeps the same key twice",
        "ipyllm/_secrets.py",
        "        return str.__hash__(self._key)  # equal secrets have equal keys",
        "        return object.__hash__(self)",
        "tests/unit/test_secrets.py",
    ),
    m(
        "server-shows-password",
        "ledger location",
        "a server's str (the store's name, --show, every message) shows its password",
        "ipyllm/_locations.py",
        '        return self._text(None if self.password is None else "****")',
        "        return self._text(None if self.password is None else str.__str__(self.password.reveal()))",
        "tests/unit/test_locations.py -k server or password",
    ),
    # -- issue 18: tests -------------------------------------------------------------------------------------------
    m(
        "user-budget-counts-everyone",
        "budgets",
        "user_daily_budget_usd on a SQLite ledger counts every user's rows and holds: one user's spend refuses another",
        "ipyllm/_sqlite.py",
        '        user_filter = "" if limit.user is None else " AND user = ?"\n        extra = [] if limit.user is None else [limit.user]',
        '        user_filter = ""\n        extra = []',
        "tests/unit/test_budget.py -k two_users",
    ),
    # -- issue 19: prompt caching -------------------------------------------------------------------------------
    m(
        "cache-marker-on-every-block",
        "prompt caching",
        "the row's part carries a cache_control marker too (two markers, the cache written per row)",
        "ipyllm/_promptcache.py",
        '[head] + ([{"type": "text", "text": rest}] if',
        '[head] + ([{"type": "text", "text": rest, "cache_control": dict(EPHEMERAL)}] if',
        "tests/batch/test_prompt_caching.py::test_anthropic_requests_carry_one_marker_on_the_shared_prefix",
        "tests/unit/test_promptcache.py",
    ),
    m(
        "cache-no-marker",
        "prompt caching",
        "a map asks Anthropic to cache nothing (no marker)",
        "ipyllm/_promptcache.py",
        'if self.style == "marker":\n            kwargs["messages"] = self.marked(kwargs["messages"])',
        'if False:\n            kwargs["messages"] = self.marked(kwargs["messages"])',
        "tests/batch/test_prompt_caching.py::test_anthropic_requests_carry_one_marker_on_the_shared_prefix",
        "tests/batch/test_prompt_caching.py::test_a_template_that_begins_with_its_field_marks_the_system_prompt",
    ),
    m(
        "cache-row-part-first",
        "prompt caching",
        "the row's part is sent before the shared prefix",
        "ipyllm/_promptcache.py",
        '"content": [head] + ([{"type": "text", "text": rest}] if rest.strip() else [])}',
        '"content": ([{"type": "text", "text": rest}] if rest.strip() else []) + [head]}',
        "tests/batch/test_prompt_caching.py::test_anthropic_requests_carry_one_marker_on_the_shared_prefix",
        "tests/unit/test_promptcache.py",
    ),
    m(
        "cache-first-row-not-alone",
        "prompt caching",
        "a cacheable map sends its first rows together: each writes the cache, none reads it",
        "ipyllm/_batchrun.py",
        "self._primed = asyncio.Event() if self.rows.cache is not None else None",
        "self._primed = None",
        "tests/batch/test_prompt_caching.py::test_a_40_row_map_reads_the_shared_prefix_after_the_first_row_at_the_cache_read_price",
        "tests/batch/test_prompt_caching.py::test_anthropic_requests_carry_one_marker_on_the_shared_prefix",
    ),
    m(
        "saved-from-cost-only",
        "prompt caching",
        "saved_usd is worked out from the cost alone, not from the list price of the tokens",
        "ipyllm/_savings.py",
        "listed - cost)",
        "-cost)",
        "tests/unit/test_savings.py",
        "tests/batch/test_prompt_caching.py::test_a_40_row_map_reads_the_shared_prefix_after_the_first_row_at_the_cache_read_price",
    ),
    m(
        "cache-tokens-priced-as-input",
        "prompt caching",
        "a call priced from its usage prices cache writes and reads as plain input",
        "ipyllm/_cost.py",
        'if usage is not None and kind == "chat":',
        "if False:",
        "tests/unit/test_cost.py::test_anthropic_cache_writes_and_reads_are_priced_at_their_rates",
        "tests/unit/test_cost.py::test_price_reads_cache_writes_and_reads_from_a_usage_object",
    ),
    m(
        "estimate-writes-as-input",
        "prompt caching",
        "the estimate of cache hits prices cache writes at the input price",
        "ipyllm/_promptcache.py",
        "write if write is not None else given * WRITE_PREMIUM",
        "given",
        "tests/batch/test_prompt_caching.py::test_anthropic_requests_carry_one_marker_on_the_shared_prefix",
        "tests/unit/test_promptcache.py",
    ),
    # -- issue 19: the cheapest route, shown before sending ------------------------------------------------------------
    m(
        "dry-run-batch-at-list-price",
        "dry run",
        "the dry run's batch route is priced at the live list price",
        "ipyllm/_rows.py",
        "        in_batch = batch_price(settings, settings.model, provider, prompt, 0).usd",
        "        in_batch = low",
        "tests/batch/test_dry_run_routes.py",
    ),
    m(
        "dry-run-budget-ignored",
        "dry run",
        "the dry run ignores the budget: it names no route that fits",
        "ipyllm/_rows.py",
        "        room = self.session.budgets.room(settings)",
        "        room = None",
        "tests/batch/test_dry_run_routes.py -k budget",
    ),
    # -- issue 19: provider batches --------------------------------------------------------------------------------
    m(
        "batch-custom-id-not-cache-key",
        "provider batches",
        "a request line's custom_id is not the row's cache key (results cannot be cached under it, nor mapped back)",
        "ipyllm/_batchjob.py",
        "(key, request_line(key, request_body(",
        "(key, request_line(key[::-1], request_body(",
        "tests/batch/test_provider_batch.py::test_the_request_file_is_what_live_map_sends_named_by_each_rows_cache_key",
    ),
    m(
        "batch-attach-ignored",
        "provider batches",
        "the same map run again while its batch runs submits a new batch instead of attaching",
        "ipyllm/_batchjob.py",
        "running = [record for record in self.session.records.batches(map_key=self.map_key) if not record.done]",
        "running: list[BatchRecord] = []",
        "tests/batch/test_provider_batch.py::test_the_same_map_in_another_session_attaches_to_the_running_batch",
    ),
    m(
        "batch-reservation-not-kept",
        "provider batches",
        "the batch's budget hold is released at submission instead of kept until its results are taken",
        "ipyllm/_batchjob.py",
        "        reservation.settled = True  # the hold outlives this call",
        "        reservation.release()  # the hold outlives this call",
        "tests/batch/test_provider_batch.py::test_a_submitted_batch_holds_its_estimate_for_every_session_on_the_ledger",
    ),
    m(
        "batch-live-price",
        "provider batches",
        "batch rows are priced at the live price",
        "ipyllm/_batchresults.py",
        "    row.cost_usd = pricer(prompt, completion or 0, usage) if prompt is not None else math.nan",
        "    row.cost_usd = pricer(prompt, completion or 0, usage) * 2 if prompt is not None else math.nan",
        "tests/batch/test_provider_batch.py::test_a_30_row_map_is_one_upload_and_one_batch_aligned_and_priced_at_the_batch_price",
    ),
    m(
        "batch-failed-line-dropped",
        "provider batches",
        "a line that failed inside the batch leaves no error row in the ledger",
        "ipyllm/_batchresults.py",
        "        rows.append(row)\n    return rows, entries, answers",
        '        rows.extend([row] if row.status == "ok" else [])\n    return rows, entries, answers',
        "tests/batch/test_provider_batch.py::test_failed_lines_are_their_rows_errors_each_row_once",
    ),
    m(
        "batch-claim-skipped",
        "provider batches",
        "two sessions starting the same map at once both submit it: nothing claims the map first",
        "ipyllm/_batchjob.py",
        "            holder = records.batch_claim(claim)",
        "            holder = None",
        "tests/batch/test_batch_claims.py::test_two_sessions_starting_the_same_map_at_once_send_it_once",
    ),
    m(
        "batch-claim-stale-kept",
        "provider batches",
        "a claim left by a kernel that died (or hung for minutes) is never taken over: the map waits for it",
        "ipyllm/_sqlbatches.py",
        "                if not is_stale(holder, claim.host, process_alive):",
        "                if True:",
        "tests/batch/test_batch_claims.py::test_a_claim_left_by_a_claimer_that_is_gone_is_taken_over",
        "tests/unit/test_batchledger.py",
    ),
    m(
        "batch-claim-not-released",
        "provider batches",
        "a claimer whose submission was refused (budget, upload error) keeps its claim: the next run waits for it",
        "ipyllm/_batchjob.py",
        "                    records.batch_unclaim(claim)",
        "                    pass",
        "tests/batch/test_batch_claims.py::test_a_budget_refusal_releases_the_claim_and_the_next_run_submits",
    ),
    m(
        "batch-rates-cache-as-input",
        "provider batches",
        "the batch rates price cached tokens as input (the check against litellm then drops the rates: every row priced slowly)",
        "ipyllm/_batchcost.py",
        "        cost = text * self.input + cached * (self.cache_read or 0.0)",
        "        cost = (text + cached) * self.input",
        "tests/unit/test_cost.py::test_batch_rates_price_each_usage_as_litellms_batch_cost_calculator",
    ),
    m(
        "chunk-stale-kept",
        "ledger views",
        "a packed chunk is taken whatever its range holds now: a row committed into it later, or deleted, is missed",
        "ipyllm/_framechunks.py",
        '    " AND c.row_count = (SELECT COUNT(*) FROM usage u WHERE u.id > c.after_id AND u.id <= c.last_id)"',
        '    " AND c.row_count >= 0"',
        "tests/unit/test_framechunks.py",
        "tests/postgres/test_framechunks_pg.py",
    ),
    m(
        "chunk-gap-skipped",
        "ledger views",
        "the rows of a range whose chunk was passed over (damaged, stale) are not read: the frame misses them",
        "ipyllm/_framechunks.py",
        "        if first > reached:\n            rest.append(",
        "        if False:\n            rest.append(",
        "tests/unit/test_framechunks.py",
    ),
    m(
        "chunk-order-kept",
        "ledger views",
        "rows read from chunks stay in id order, not in time order as every other read gives them",
        "ipyllm/_framechunks.py",
        "    if (later | (same & (ids[1:] > ids[:-1]))).all():",
        "    if True:",
        "tests/unit/test_framechunks.py",
    ),
    m(
        "chunk-never-packed-by-writers",
        "ledger views",
        "kernels never pack the rows they write: every fresh kernel reads a grown ledger row by row",
        "ipyllm/_framecache.py",
        "            self._next_pack = self._written + CHECK_EVERY\n            self._pack()",
        "            self._next_pack = self._written + CHECK_EVERY",
        "tests/unit/test_framechunks.py",
        "tests/postgres/test_framechunks_pg.py",
    ),
]


def apply(mutation: Mutation, root: Path) -> bool:
    """Apply the substitution in the copy at ``root``; False when the old text is not there."""
    path = root / mutation.file
    if not path.exists():
        return False
    text = path.read_text()
    if mutation.regex:
        changed, found = re.subn(mutation.old, mutation.new, text)
        if found == 0:
            return False
    else:
        found = text.count(mutation.old)
        if found == 0:
            return False
        if found != mutation.count:
            raise SystemExit(f"{mutation.name}: the old text occurs {found} times in {mutation.file}, expected {mutation.count}")
        changed = text.replace(mutation.old, mutation.new)
    if path.suffix == ".py":
        # A mutant that does not compile fails every test it reaches: it would count as killed and show nothing.
        try:
            compile(changed, str(path), "exec")
        except SyntaxError as error:
            raise SystemExit(f"{mutation.name}: the mutated {mutation.file} does not compile ({error.msg}, line {error.lineno})") from None
    path.write_text(changed)
    return True


def copy_repository(into: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints"))
        elif source.exists():
            shutil.copy2(source, into / name)


def pytest_command(mutation: Mutation) -> list[str]:
    """One pytest run over the selected tests: stop at the first failure, file order, no cache."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--random-order-bucket=none", "-p", "no:randomly"]
    # One -k for the whole run: a selection's own keyword, else its file's or test's name (which -k also matches).
    keywords: list[str] = []
    for selection in mutation.tests:
        path, _, keyword = selection.partition(" -k ")
        command.append(path)
        keywords.append(f"({keyword})" if keyword else path.rpartition("::")[2] if "::" in path else Path(path).stem)
    if any(" -k " in selection for selection in mutation.tests):
        command += ["-k", " or ".join(keywords)]
    return command + list(mutation.pytest_args)


def run(mutation: Mutation, timeout: float) -> tuple[str, float, str]:
    """Apply one mutation to a fresh copy and run its tests: (result, seconds, the first failing test)."""
    with tempfile.TemporaryDirectory(prefix=f"ipyllm-mutant-{mutation.name}-") as directory:
        root = Path(directory)
        copy_repository(root)
        if not apply(mutation, root):
            return "not applicable (text not found)", 0.0, ""
        env = {**os.environ, "PYTHONPATH": str(root), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"}
        started = time.monotonic()
        process = subprocess.Popen(
            pytest_command(mutation), cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the run's own process group: pytest and the kernels it started
            process.communicate()
            return "timeout", time.monotonic() - started, ""
        elapsed = time.monotonic() - started
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)
    if process.returncode == 0:
        return "SURVIVED", elapsed, ""
    if process.returncode == 1 and failed:
        return "killed", elapsed, failed[0]
    if process.returncode == 5:
        return "no tests selected", elapsed, ""
    return f"killed (pytest exit {process.returncode})", elapsed, (failed or [output.strip().splitlines()[-1] if output.strip() else ""])[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this mutation (repeatable)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per mutation (default 240)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    names = {mutation.name for mutation in MUTATIONS}
    unknown = [name for name in args.only if name not in names]
    if unknown:
        parser.error(f"unknown mutation {', '.join(unknown)}: see --list")
    chosen = [mutation for mutation in MUTATIONS if not args.only or mutation.name in args.only]
    if args.list:
        for mutation in chosen:
            print(f"{mutation.name:<30} {mutation.area:<24} {mutation.breaks}")
        return 0
    width = max(len(mutation.name) for mutation in chosen)
    print(f"{'mutation':<{width}}  {'area':<24}  {'result':<34}  {'time':>6}  caught by")
    results = []
    for mutation in chosen:
        result, elapsed, caught_by = run(mutation, args.timeout)
        results.append(result)
        print(f"{mutation.name:<{width}}  {mutation.area:<24}  {result:<34}  {elapsed:5.0f}s  {caught_by}", flush=True)
    killed = sum(r.startswith(("killed", "timeout")) for r in results)
    survived = results.count("SURVIVED")
    missing = sum(r.startswith("not applicable") for r in results)
    print(f"\n{killed} killed, {survived} survived, {missing} not applicable, of {len(results)} mutations")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
