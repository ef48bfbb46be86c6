//! The counters in Redis: one Lua script per call checks every window of the request and
//! counts all of them or none, with Redis's own clock (so any number of stateless service
//! replicas agree on window boundaries). One server (`redis://`) or a Redis Cluster
//! (`redis+cluster://HOST:PORT[,HOST:PORT…]`): a call's counters share a hash slot.

use super::plan::{Counted, Counter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::Script;
use std::time::Duration;
use tokio::sync::RwLock;

/// KEYS: one counter per descriptor (a hash `{w: window start ms, c: count}` that expires when
/// its window ends). ARGV: the call's deadline (Unix ms), then per counter its limit, window
/// length (ms) and hits. Answers `[admitted, now_ms, before₁, reset_ms₁, …]`, or `[-1, now_ms]`
/// without counting when the deadline has passed (the caller has given up on the answer).
/// Per counter: its limit, window (ms; 0 for a balance of credits, whose name holds its
/// period), hits and a balance's end (ms; 0 without refill: kept `BALANCE_IDLE_MS` after the
/// last spend). All or nothing: nothing is counted unless every counter has room.
pub const SCRIPT: &str = r"
local BALANCE_IDLE_MS = 34560000000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[1]) then return {-1, now} end
local n = #KEYS
local before, starts, ends = {}, {}, {}
local admitted = 1
for i = 1, n do
  local limit = tonumber(ARGV[4 * i - 2])
  local win = tonumber(ARGV[4 * i - 1])
  local hits = tonumber(ARGV[4 * i])
  local fixed = tonumber(ARGV[4 * i + 1])
  local start, stop = 0, 0
  if win > 0 then
    start = now - (now % win)
    stop = start + win
  elseif fixed > 0 then
    -- Kept a minute past a refill this Redis's clock has passed already (a filter's clock
    -- behind it): the period is in the name, and a counter set to expire in the past would be
    -- deleted as soon as written, spending from nothing.
    stop = math.max(fixed, now + 60000)
  else
    stop = now + BALANCE_IDLE_MS
  end
  local v = redis.call('HMGET', KEYS[i], 'w', 'c')
  local c = 0
  if v[1] and tonumber(v[1]) == start then c = tonumber(v[2]) or 0 end
  before[i], starts[i], ends[i] = c, start, stop
  -- A balance only refuses what costs something (spent may exceed a grant lowered since).
  if (win > 0 or hits > 0) and c + hits > limit then admitted = 0 end
end
local out = {admitted, now}
for i = 1, n do
  local hits = tonumber(ARGV[4 * i])
  if admitted == 1 and hits > 0 then
    redis.call('HSET', KEYS[i], 'w', starts[i], 'c', before[i] + hits)
    redis.call('PEXPIREAT', KEYS[i], ends[i])
  end
  out[#out + 1] = before[i]
  out[#out + 1] = ends[i]
end
return out
";

/// How long one Redis call may take before the service answers `UNAVAILABLE`.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1000);

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Why a call could not be counted: the service answers `UNAVAILABLE`, never `OK`.
#[derive(Debug)]
pub struct StoreError(pub String);

pub struct RedisStore {
    /// A Redis Cluster's client (connected on first use); `None` for one server.
    cluster: Option<ClusterClient>,
    conn: RwLock<Option<Conn>>,
    script: Script,
}

impl RedisStore {
    /// Parses the URL and prepares the connection; nothing is connected until the first call
    /// (the service starts, and answers `UNAVAILABLE`, while Redis is away).
    pub fn new(url: &str) -> Result<RedisStore, String> {
        let script = Script::new(SCRIPT);
        if let Some(nodes) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = nodes
                .split(',')
                .filter(|n| !n.is_empty())
                .map(|n| format!("redis://{n}"))
                .collect();
            if nodes.is_empty() {
                return Err("--redis redis+cluster:// needs at least one HOST:PORT".into());
            }
            let client = ClusterClient::builder(nodes)
                .connection_timeout(Duration::from_millis(500))
                .response_timeout(CALL_TIMEOUT)
                // A script is never sent twice: after a failed attempt it may have run.
                .retries(0)
                .build()
                .map_err(|e| format!("--redis {url}: {e}"))?;
            return Ok(RedisStore {
                cluster: Some(client),
                conn: RwLock::new(None),
                script,
            });
        }
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://"))
        {
            return Err(format!(
                "--redis {url}: expected redis://HOST:PORT[/DB] or redis+cluster://HOST:PORT[,HOST:PORT…]"
            ));
        }
        let client = redis::Client::open(url).map_err(|e| format!("--redis {url}: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("--redis {url}: {e}"))?;
        Ok(RedisStore {
            cluster: None,
            conn: RwLock::new(Some(Conn::Single(manager))),
            script,
        })
    }

    async fn connection(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.conn.read().await.as_ref() {
            return Ok(c.clone());
        }
        let mut slot = self.conn.write().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let Some(client) = &self.cluster else {
            return Err(StoreError("no connection".into()));
        };
        let c = tokio::time::timeout(CALL_TIMEOUT, client.get_async_connection())
            .await
            .map_err(|_| StoreError("connecting to the cluster timed out".into()))?
            .map_err(|e| StoreError(format!("connecting to the cluster: {e}")))?;
        *slot = Some(Conn::Cluster(c.clone()));
        Ok(Conn::Cluster(c))
    }

    /// Checks and counts one call's counters atomically, if Redis runs the script within
    /// `budget` (else nothing is counted: the caller will have given up).
    pub async fn count(
        &self,
        counters: &[Counter],
        budget: Duration,
    ) -> Result<Counted, StoreError> {
        let deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| (d + budget).as_millis() as u64);
        let mut inv = self.script.prepare_invoke();
        inv.arg(deadline);
        for c in counters {
            inv.key(&c.key)
                .arg(c.limit)
                .arg(c.window_ms)
                .arg(c.hits)
                .arg(c.until_ms);
        }
        let conn = self.connection().await?;
        let call = async {
            match conn {
                Conn::Single(mut m) => inv.invoke_async::<Vec<i64>>(&mut m).await,
                Conn::Cluster(mut m) => inv.invoke_async::<Vec<i64>>(&mut m).await,
            }
        };
        let reply = tokio::time::timeout(budget, call)
            .await
            .map_err(|_| StoreError("Redis did not answer in time".into()))?
            .map_err(|e| StoreError(e.to_string()))?;
        Counted::from_reply(&reply, counters.len())
            .ok_or_else(|| StoreError(format!("unexpected script answer {reply:?}")))
    }

    /// PING, for the health service.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.connection().await?;
        let call = async {
            let cmd = redis::cmd("PING");
            match conn {
                Conn::Single(mut m) => cmd.query_async::<String>(&mut m).await,
                Conn::Cluster(mut m) => cmd.query_async::<String>(&mut m).await,
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| StoreError("Redis did not answer in time".into()))?
            .map(|_| ())
            .map_err(|e| StoreError(e.to_string()))
    }
}
