"""The task store on Redis: a fleet of processes and hosts shares its tasks and its budget.

Each rule of :mod:`wan_async._store` is one server-side Lua script, so it holds atomically
whatever number of processes run it, and every time in it is the server's (``TIME``), never
a host's clock. Keys, all under the namespace (a hash of the gateway URL and the API key)::

    {ns}:t:<task_id>      hash   o: owner, s: snapshot JSON, r: its order, e: "1" once ended
    {ns}:owners           zset   owner -> end of its lease (server milliseconds)
    {ns}:owned:<owner>    set    the unfinished tasks it owns
    {ns}:rate             hash   r: the fleet's request rate ('' unlimited), at: when set
    {ns}:bucket           hash   p, s: the poll and submit lanes' tokens, t: when filled
    {ns}:j:<name>:lines   list   a shared batch journal's lines (as a journal file's)
    {ns}:j:<name>:claims  hash   item key -> the client that claimed its submit
    {ns}:snap             channel  the id of each task whose snapshot was stored, and
                                   "*rate" when the rate changed

The namespace is in braces, so all keys of one fleet hash to one slot; the scripts still
build some key names themselves, so a Redis Cluster is not supported (one server, or a
replicated pair behind Sentinel, is).

Needs ``pip install 'wan-async[redis]'`` (redis-py's asyncio client).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ._exceptions import ConfigurationError, StoreUnavailable
from ._store import LEASE, RATE_CHANGED, TASK_TTL, Claim, StoredTask, check_lease

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["REDIS_URL_ENV", "RedisStore"]

#: Where :meth:`RedisStore.from_env` finds the server.
REDIS_URL_ENV = "WAN_REDIS_URL"

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: owners. ARGV: owner, lease (ms), first ("1"/"0").
_BEAT = (
    _NOW
    + """
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if known or ARGV[3] == '1' then return 1 end
return 0
"""
)

# KEYS: owners. ARGV: owner.
_RESIGN = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then redis.call('ZADD', KEYS[1], 0, ARGV[1]) end
return 1
"""

# KEYS: the task, owners, the claimant's owned set. ARGV: claimant, task ttl (ms),
# owned-set prefix, task id. Returns {mine, owner, alive, snapshot or '', ended}.
_CLAIM = (
    _NOW
    + """
local cur = redis.call('HGET', KEYS[1], 'o') or ''
local snap = redis.call('HGET', KEYS[1], 's') or ''
if redis.call('HGET', KEYS[1], 'e') == '1' then return {0, '', 0, snap, 1} end
if cur ~= '' and cur ~= ARGV[1] then
  local lease = redis.call('ZSCORE', KEYS[2], cur)
  if lease and tonumber(lease) > now then return {0, cur, 1, snap, 0} end
  redis.call('SREM', ARGV[3] .. cur, ARGV[4])
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'o', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], 'o', ARGV[1])
end
redis.call('SADD', KEYS[3], ARGV[4])
return {1, ARGV[1], 1, snap, 0}
"""
)

# KEYS: owners, the adopter's owned set. ARGV: adopter, owned-set prefix, task prefix.
_ADOPT = (
    _NOW
    + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
for _, owner in ipairs(dead) do
  if owner ~= ARGV[1] then
    redis.call('ZREM', KEYS[1], owner)
    local set = ARGV[2] .. owner
    local ids = redis.call('SMEMBERS', set)
    redis.call('DEL', set)
    local taken = {}
    for _, id in ipairs(ids) do
      local key = ARGV[3] .. id
      if redis.call('HGET', key, 'o') == owner and redis.call('HGET', key, 'e') ~= '1' then
        redis.call('HSET', key, 'o', ARGV[1])
        redis.call('SADD', KEYS[2], id)
        taken[#taken + 1] = id
      end
    end
    if #taken > 0 then return taken end
  end
end
return {}
"""
)

# KEYS: the task. ARGV: order, snapshot, ended, task ttl (ms), channel, task id, owned prefix.
_PUT = """
if redis.call('HGET', KEYS[1], 'e') == '1' then return 0 end
local old = tonumber(redis.call('HGET', KEYS[1], 'r') or '-1')
if tonumber(ARGV[1]) <= old then return 0 end
local fresh = redis.call('EXISTS', KEYS[1]) == 0
redis.call('HSET', KEYS[1], 's', ARGV[2], 'r', ARGV[1], 'e', ARGV[3])
if fresh then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
if ARGV[3] == '1' then
  local owner = redis.call('HGET', KEYS[1], 'o')
  if owner and owner ~= '' then redis.call('SREM', ARGV[7] .. owner, ARGV[6]) end
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

# KEYS: owners, then the tasks. Returns per task {exists, owner, alive, snapshot, ended}.
_GET = (
    _NOW
    + """
local out = {}
for i = 2, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'o', 's', 'e')
  if f[1] == false and f[2] == false then
    out[#out + 1] = {0, '', 0, '', 0}
  else
    local owner = f[1] or ''
    local ended = f[3] == '1'
    local alive = 0
    if not ended and owner ~= '' then
      local lease = redis.call('ZSCORE', KEYS[1], owner)
      if lease and tonumber(lease) > now then alive = 1 end
    end
    if ended then owner = '' end
    out[#out + 1] = {1, owner, alive, f[2] or '', ended and 1 or 0}
  end
end
return out
"""
)


# KEYS: owners. Returns how many leases run.
_MEMBERS = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)

# KEYS: the rate. ARGV: rate ('' for unlimited), cooldown (ms), decrease, channel, message.
# Returns the rate in force after, as text ('' for unlimited).
_PROPOSE = (
    _NOW
    + """
local function num(x) if not x or x == '' then return math.huge end return tonumber(x) end
local cur = redis.call('HMGET', KEYS[1], 'r', 'at')
local current = num(cur[1])
local at = tonumber(cur[2])
local wanted = num(ARGV[1])
local moves
if ARGV[3] == '1' then moves = wanted < current else moves = wanted ~= current end
if moves and (at == nil or now - at >= tonumber(ARGV[2])) then
  redis.call('HSET', KEYS[1], 'r', ARGV[1], 'at', now)
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  return ARGV[1]
end
return cur[1] or ''
"""
)

# KEYS: the bucket. ARGV: kind, rate (per second), poll share. The rule of take_token();
# returns the seconds to wait as text ('0': taken). Lanes are kept for an hour idle.
_TAKE = (
    _NOW
    + """
local b = redis.call('HMGET', KEYS[1], 'p', 's', 't')
local rate = tonumber(ARGV[2])
local share = tonumber(ARGV[3])
local p = tonumber(b[1]) or 0
local s = tonumber(b[2]) or 0
local t = tonumber(b[3]) or now
local elapsed = math.max(0, now - t) / 1000
local size_p = math.max(1, share * math.max(1, rate))
local size_s = math.max(1, (1 - share) * math.max(1, rate))
local fp = p + elapsed * rate * share
local fs = s + elapsed * rate * (1 - share)
p = math.min(size_p, fp + math.max(0, fs - size_s))
s = math.min(size_s, fs + math.max(0, fp - size_p))
local wait = 0
local eps = 1e-9
if ARGV[1] == 'poll' then
  if p >= 1 - eps then p = p - 1
  elseif p + s >= 1 - eps then s = p + s - 1; p = 0
  else wait = (1 - p - s) / rate end
elseif s >= 1 - eps then s = s - 1
else wait = (1 - s) / (rate * (1 - share)) end
redis.call('HSET', KEYS[1], 'p', tostring(p), 's', tostring(s), 't', now)
redis.call('PEXPIRE', KEYS[1], 3600000)
return tostring(wait)
"""
)


# KEYS: owners. Returns the owners whose leases run.
_LIVE = (
    _NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""
)

# KEYS: the journal's claims, its lines. ARGV: item, owner, line. 1 if claimed.
_JOURNAL_CLAIM = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[3])
return 1
"""

# KEYS: the journal's claims, its lines. ARGV: item, line.
_JOURNAL_RELEASE = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stored(task_id: str, row: Sequence[Any]) -> StoredTask:
    snapshot = _text(row[3])
    return StoredTask(
        task_id=task_id,
        owner=_text(row[1]),
        alive=int(row[2]) == 1,
        snapshot=snapshot or None,
        ended=int(row[4]) == 1,
    )


class RedisStore:
    """A :class:`~wan_async.TaskStore` on one Redis server, shared by every process and host
    that uses the same gateway and key (``WanClient(store=RedisStore.from_url(...))``).

    Args:
        client: a ``redis.asyncio.Redis`` (its connection pool is used, never closed here).
        lease: seconds a client owns its tasks without renewing (it renews every quarter of
            it): a client that stops (``kill -9``, a host lost) has its unfinished tasks
            adopted by another within ``lease`` and a quarter. Seconds of the server's clock.
        task_ttl: seconds a task's record lives (the gateway forgets tasks after 24 hours).
    """

    def __init__(
        self, client: redis.asyncio.Redis, *, lease: float = LEASE, task_ttl: float = TASK_TTL
    ) -> None:
        self.lease = check_lease(lease)
        self._redis = client
        self._owns_client = False
        self._ttl_ms = str(max(1, round(task_ttl * 1000)))
        self._ns = ""
        self._scripts: dict[str, Any] = {}

    @classmethod
    def from_url(cls, url: str, *, lease: float = LEASE, task_ttl: float = TASK_TTL) -> RedisStore:
        """A store on the server at ``url`` (``redis://host:port/db``, ``rediss://`` for
        TLS, ``unix:///path/to/socket``); its connections are closed with the client.

        Raises:
            ConfigurationError: redis-py is not installed, or the URL is not a Redis URL.
        """
        try:
            import redis.asyncio as aioredis  # an optional dependency
        except ImportError:
            msg = "RedisStore needs redis-py: pip install 'wan-async[redis]'"
            raise ConfigurationError(msg) from None
        try:
            client = aioredis.Redis.from_url(url)
        except ValueError as exc:
            msg = f"not a Redis URL ({exc}); use redis://host:port/db or unix:///path"
            raise ConfigurationError(msg) from None
        store = cls(client, lease=lease, task_ttl=task_ttl)
        store._owns_client = True
        return store

    @classmethod
    def from_env(cls, *, lease: float = LEASE, task_ttl: float = TASK_TTL) -> RedisStore | None:
        """The store ``$WAN_REDIS_URL`` names, or None if it is unset or empty."""
        url = os.environ.get(REDIS_URL_ENV, "").strip()
        return cls.from_url(url, lease=lease, task_ttl=task_ttl) if url else None

    def __repr__(self) -> str:
        pool = self._redis.connection_pool
        kwargs = pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"<RedisStore {where} db={kwargs.get('db', 0)}>"  # never the password

    @property
    def redis(self) -> redis.asyncio.Redis:
        """The redis-py client the store uses."""
        return self._redis

    def key(self, *parts: str) -> str:
        """The full name of one of the store's keys."""
        return ":".join((self._ns, *parts))

    async def _run(self, name: str, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._redis.register_script(source)
        try:
            return await script(keys=list(keys), args=list(args))
        except Exception as exc:
            raise _unavailable(exc) from exc

    async def open(self, namespace: str) -> None:
        self._ns = "{" + namespace + "}"
        try:
            await self._redis.ping()
        except Exception as exc:
            raise _unavailable(exc) from exc

    async def aclose(self) -> None:
        if self._owns_client:
            await self._redis.aclose()

    async def beat(self, owner: str, lease: float, *, first: bool) -> bool:
        lease_ms = max(1, round(lease * 1000))
        kept = await self._run(
            "beat", _BEAT, [self.key("owners")], [owner, lease_ms, "1" if first else "0"]
        )
        return int(kept) == 1

    async def resign(self, owner: str) -> None:
        await self._run("resign", _RESIGN, [self.key("owners")], [owner])

    async def claim(self, task_id: str, owner: str, *, new: bool) -> Claim:
        row = await self._run(
            "claim",
            _CLAIM,
            [self.key("t", task_id), self.key("owners"), self.key("owned", owner)],
            [owner, self._ttl_ms, self.key("owned", ""), task_id],
        )
        return Claim(mine=int(row[0]) == 1, task=_stored(task_id, row))

    async def adopt(self, owner: str) -> list[str]:
        taken = await self._run(
            "adopt",
            _ADOPT,
            [self.key("owners"), self.key("owned", owner)],
            [owner, self.key("owned", ""), self.key("t", "")],
        )
        return [_text(task_id) for task_id in taken]

    async def put(self, task_id: str, *, order: float, snapshot: str, ended: bool) -> bool:
        stored = await self._run(
            "put",
            _PUT,
            [self.key("t", task_id)],
            [
                str(int(order)),
                snapshot,
                "1" if ended else "0",
                self._ttl_ms,
                self.key("snap"),
                task_id,
                self.key("owned", ""),
            ],
        )
        return int(stored) == 1

    async def get(self, task_ids: Sequence[str]) -> list[StoredTask | None]:
        if not task_ids:
            return []
        rows = await self._run(
            "get", _GET, [self.key("owners"), *(self.key("t", t) for t in task_ids)], []
        )
        return [
            _stored(task_id, row) if int(row[0]) == 1 else None
            for task_id, row in zip(task_ids, rows, strict=True)
        ]

    async def members(self) -> int:
        return int(await self._run("members", _MEMBERS, [self.key("owners")], []))

    async def rate(self) -> float | None:
        try:
            value = await self._redis.hget(self.key("rate"), "r")
        except Exception as exc:
            raise _unavailable(exc) from exc
        return _rate(value)

    async def propose_rate(
        self, rate: float | None, *, cooldown: float, decrease: bool
    ) -> float | None:
        value = await self._run(
            "propose",
            _PROPOSE,
            [self.key("rate")],
            [
                "" if rate is None else repr(float(rate)),
                max(0, round(cooldown * 1000)),
                "1" if decrease else "0",
                self.key("snap"),
                RATE_CHANGED,
            ],
        )
        return _rate(value)

    async def live_owners(self) -> set[str]:
        owners = await self._run("live", _LIVE, [self.key("owners")], [])
        return {_text(owner) for owner in owners}

    async def durability(self) -> str | None:
        try:
            config = await self._redis.config_get("append*")
        except Exception as exc:
            return (
                f"the server's persistence cannot be read ({type(exc).__name__}: {exc}; a "
                "managed Redis may disable CONFIG)"
            )
        settings = {_text(k): _text(v) for k, v in config.items()}
        appendonly = settings.get("appendonly")
        appendfsync = settings.get("appendfsync")
        if appendonly == "yes" and appendfsync == "always":
            return None
        return f"the server has appendonly {appendonly!r} and appendfsync {appendfsync!r}"

    def _journal_keys(self, name: str) -> tuple[str, str]:
        return self.key("j", name, "claims"), self.key("j", name, "lines")

    async def journal_read(self, name: str, start: int) -> list[str]:
        try:
            lines = await self._redis.lrange(self._journal_keys(name)[1], start, -1)
        except Exception as exc:
            raise _unavailable(exc) from exc
        return [_text(line) for line in lines]

    async def journal_append(self, name: str, line: str) -> None:
        try:
            await self._redis.rpush(self._journal_keys(name)[1], line)
        except Exception as exc:
            raise _unavailable(exc) from exc

    async def journal_claim(self, name: str, item: str, owner: str, line: str) -> bool:
        taken = await self._run(
            "journal_claim", _JOURNAL_CLAIM, self._journal_keys(name), [item, owner, line]
        )
        return int(taken) == 1

    async def journal_release(self, name: str, item: str, line: str) -> None:
        await self._run("journal_release", _JOURNAL_RELEASE, self._journal_keys(name), [item, line])

    async def take(self, kind: str, *, rate: float, poll_share: float) -> float:
        wait = await self._run(
            "take", _TAKE, [self.key("bucket")], [kind, repr(float(rate)), repr(poll_share)]
        )
        return max(0.0, float(_text(wait)))

    @asynccontextmanager
    async def announcements(self) -> AsyncIterator[AsyncIterator[str]]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            try:
                await pubsub.subscribe(self.key("snap"))
            except Exception as exc:
                raise _unavailable(exc) from exc
            yield self._messages(pubsub)
        finally:
            with contextlib.suppress(Exception):  # a lost connection is closed anyway
                await pubsub.aclose()

    async def _messages(self, pubsub: Any) -> AsyncIterator[str]:
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except Exception as exc:
                raise _unavailable(exc) from exc
            if message is not None and message.get("type") == "message":
                yield _text(message["data"])


def _rate(value: object) -> float | None:
    text = _text(value) if value is not None else ""
    return float(text) if text else None


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"the Redis task store failed: {type(exc).__name__}: {exc}")
