#!/usr/bin/env python3
"""Key-service figures for `make bench` (medians from one run; latency on loopback, one client).

Starts `target/release/keygate serve` on a fresh SQLite file (and on PostgreSQL when Debian's
server binaries are installed), then measures: create and list latency, and the /keys feed at
100,000 keys (full answer, 304 revalidation, a delta after one revocation). The 100,000 keys
are written straight into the database (the service's own schema) rather than through 100,000
API calls. Prints a Markdown table.
"""
import hashlib, json, os, secrets, shutil, socket, sqlite3, statistics, subprocess, sys, tempfile, time
import urllib.request, urllib.error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYGATE = os.path.join(ROOT, "target/release/keygate")
TOKEN = "bench-" + secrets.token_hex(8)
CONFIG = {"key_sources": [{"header": "x-api-key"}],
          "prefixes": [{"prefix": "bk_live_", "environment": "LIVE", "role": "admin"}],
          "roles": {"admin": {"methods": ["*"]}}}


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def call(url, method="GET", body=None, headers=None):
    h = {"authorization": "Bearer " + TOKEN, "content-type": "application/json"}
    h.update(headers or {})
    req = urllib.request.Request(url, data=body.encode() if body else None, method=method, headers=h)
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read(); status = r.status
    except urllib.error.HTTPError as e:
        data = e.read(); status = e.code
    return status, data, (time.perf_counter() - t) * 1000


def ms(xs):
    return f"{statistics.median(xs):.2f} ms"


class Service:
    def __init__(self, db, cfg):
        self.port = free_port()
        env = dict(os.environ, KEYGATE_ADMIN_TOKEN_SHA256=hashlib.sha256(TOKEN.encode()).hexdigest())
        self.p = subprocess.Popen([KEYGATE, "serve", "--listen", f"127.0.0.1:{self.port}", "--database", db,
                                   "--config", cfg], env=env, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(300):
            try:
                if call(self.url + "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("keygate serve did not start")

    def stop(self):
        self.p.terminate(); self.p.wait()


def api_figures(svc, rows, label):
    creates = [call(svc.url + "/v1/api-keys", "POST", json.dumps({"prefix": "bk_live_", "name": f"k{i}"}))[2]
               for i in range(200)]
    lists = [call(svc.url + "/v1/api-keys")[2] for _ in range(20)]
    ids = [k["id"] for k in json.loads(call(svc.url + "/v1/api-keys")[1])["data"]]
    revokes = [call(svc.url + f"/v1/api-keys/{i}", "DELETE")[2] for i in ids[:50]]
    reports = []
    for r in range(5):
        body = json.dumps({"report_id": f"bench-{r}", "keys": [
            {"id": f"k{i}", "requests": 3, "allowed": 2, "rejected": {"rate_limited": 1},
             "last_used": int(time.time())} for i in range(5000)]})
        reports.append(call(svc.url + "/usage", "POST", body)[2])
    rows.append((label, "create (POST /v1/api-keys)", ms(creates)))
    rows.append((label, "usage report of 5,000 keys (POST /usage)", ms(reports)))
    rows.append((label, "list, 200 keys (GET /v1/api-keys)", ms(lists)))
    rows.append((label, "revoke (DELETE /v1/api-keys/{id})", ms(revokes)))


def bulk_sqlite(path, n):
    db = sqlite3.connect(path)
    seq = db.execute("SELECT value FROM keygate_meta WHERE name='seq'").fetchone()[0] + 1
    now = int(time.time())
    db.executemany(
        "INSERT INTO api_keys (id, sha256, prefix, name, tenant, role, environment, created_at, expires_at,"
        " revoked, restrictions, last_used, seq) VALUES (?,?,?,?,?,NULL,NULL,?,NULL,0,'{}',NULL,?)",
        ((f"bulk_{i}", hashlib.sha256(f"bk_live_bulk_{i}".encode()).hexdigest(), "bk_live_", f"bulk {i}",
          f"org_{i % 100}", now, seq) for i in range(n)))
    db.execute("UPDATE keygate_meta SET value = ? WHERE name='seq'", (seq,))
    db.commit(); db.close()


def feed_figures(svc, rows, label):
    fulls, sizes = [], 0
    for _ in range(5):
        st, data, t = call(svc.url + "/keys")
        fulls.append(t); sizes = len(data)
    version = json.loads(data)["version"]
    n = len(json.loads(data)["keys"])
    revalid = [call(svc.url + "/keys", headers={"if-none-match": f'"{version}"'})[2] for _ in range(20)]
    call(svc.url + "/v1/api-keys/bulk_7", "DELETE")
    deltas = []
    for _ in range(10):
        st, d, t = call(svc.url + f"/keys?since={version}")
        deltas.append(t)
    assert json.loads(d)["upserts"][0]["id"] == "bulk_7"
    rows.append((label, f"/keys full answer, {n:,} keys ({sizes / 1e6:.1f} MB), first (built)", f"{fulls[0]:.2f} ms"))
    rows.append((label, "/keys full answer again (same version: cached bytes)", ms(fulls[1:])))
    rows.append((label, "/keys revalidation (If-None-Match → 304)", ms(revalid)))
    rows.append((label, f"/keys?since= after one revocation in {n:,}", ms(deltas)))


def audit_figures(svc, db_path, rows, label):
    """The audit log's cost: an edit's latency (the change and its entry in one transaction) and
    the bytes an entry adds to the database file."""
    status, data, _ = call(svc.url + "/v1/api-keys", "POST", json.dumps({"prefix": "bk_live_", "name": "audited"}))
    kid = json.loads(data)["data"]["id"]
    edits = [call(svc.url + f"/v1/api-keys/{kid}", "PATCH", json.dumps({"name": f"n{i}"}))[2] for i in range(200)]
    rows.append((label, "edit (PATCH /v1/api-keys/{id}, with its audit entry)", ms(edits)))
    if db_path:
        db = sqlite3.connect(db_path)
        n = db.execute("SELECT count(*) FROM audit_log").fetchone()[0]
        size = db.execute("SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'audit_log%' OR name IN "
                          "(SELECT name FROM sqlite_master WHERE tbl_name='audit_log')").fetchone()[0]
        db.close()
        rows.append((label, f"audit log on disk (table and 3 indexes, {n:,} entries)", f"{size / n:.0f} B/entry"))


def usage_figures(db_path, url_of, rows, label):
    """`GET /v1/usage` at 10,000 keys × 90 days: each key used in 2 hours of every day on 2
    routes (allowed), written straight into the service's tables; then the queries a dashboard
    makes, and the bytes a row costs."""
    now = int(time.time())
    day0 = now - now % 86400 - 89 * 86400
    db = sqlite3.connect(db_path)
    db.executemany("INSERT INTO usage_by_hour (key_id, hour, route, decision, n) VALUES (?,?,?,?,?)",
                   ((f"bulk_{k}", day0 + d * 86400 + h * 3600, r, "allowed", 7)
                    for k in range(10_000) for d in range(90) for h in (9 + k % 5, 15) for r in ("orders", "-")))
    db.execute("INSERT INTO usage_by_day (key_id, day, route, decision, n) SELECT key_id, hour - hour % 86400,"
               " route, decision, SUM(n) FROM usage_by_hour GROUP BY 1, 2, 3, 4")
    db.commit()
    n = db.execute("SELECT count(*) FROM usage_by_hour").fetchone()[0]
    days = db.execute("SELECT count(*) FROM usage_by_day").fetchone()[0]
    size = db.execute("SELECT sum(pgsize) FROM dbstat WHERE name IN "
                      "(SELECT name FROM sqlite_master WHERE tbl_name='usage_by_hour')").fetchone()[0]
    day_size = db.execute("SELECT sum(pgsize) FROM dbstat WHERE name IN "
                          "(SELECT name FROM sqlite_master WHERE tbl_name='usage_by_day')").fetchone()[0]
    db.execute("ANALYZE"); db.commit(); db.close()
    svc = Service("sqlite:" + db_path, url_of)
    frm = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(day0))
    week = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 6 * 86400))
    for what, q in [("every tenant, 90 days by day", f"/v1/usage?from={frm}&granularity=day"),
                    ("one tenant (100 keys), 90 days by day", f"/v1/usage?tenant=org_7&from={frm}&granularity=day"),
                    ("one key, 7 days by hour", f"/v1/usage?key=bulk_7&from={week}&granularity=hour"),
                    ("one key's history (GET /v1/api-keys/{id}/usage)", "/v1/api-keys/bulk_7/usage")]:
        times = []
        for _ in range(5):
            st, data, t = call(svc.url + q)
            assert st == 200, data
            times.append(t)
        rows.append((label, f"usage at 10,000 keys × 90 days ({n / 1e6:.1f}M hourly, {days / 1e6:.1f}M daily rows): {what}", ms(times)))
    # A usage report's write path: 5,000 of these keys, each on 2 routes (hourly and daily upserts).
    reports = []
    for r in range(5):
        body = json.dumps({"report_id": f"usage-{r}", "keys": [
            {"id": f"bulk_{i}", "requests": 3, "allowed": 3, "rejected": {}, "last_used": now,
             "routes": [{"route": "orders", "requests": 2, "allowed": 2}, {"route": "-", "requests": 1, "allowed": 1}]}
            for i in range(5000)]})
        st, data, t = call(svc.url + "/usage", "POST", body)
        assert st == 200, data
        reports.append(t)
    rows.append((label, "usage report of 5,000 known keys × 2 routes (POST /usage)", ms(reports)))
    svc.stop()
    rows.append((label, "usage_by_hour on disk (table, primary key, time index)", f"{size / n:.0f} B/row"))
    rows.append((label, "usage_by_day on disk (table, primary key, time index)", f"{day_size / days:.0f} B/row"))


def main():
    tmp = tempfile.mkdtemp(prefix="keygate-bench-ks-")
    cfg = os.path.join(tmp, "plugin.json")
    open(cfg, "w").write(json.dumps(CONFIG))
    rows = []
    try:
        db = os.path.join(tmp, "keys.db")
        svc = Service("sqlite:" + db, cfg)
        api_figures(svc, rows, "SQLite")
        audit_figures(svc, db, rows, "SQLite")
        bulk_sqlite(db, 100_000)
        feed_figures(svc, rows, "SQLite")
        svc.stop()
        usage_db = os.path.join(tmp, "usage.db")
        svc = Service("sqlite:" + usage_db, cfg)
        svc.stop()
        bulk_sqlite(usage_db, 10_000)
        usage_figures(usage_db, cfg, rows, "SQLite")
        pg = postgres(tmp)
        if pg:
            url, stop = pg
            try:
                svc = Service(url, cfg)
                api_figures(svc, rows, "PostgreSQL")
                audit_figures(svc, None, rows, "PostgreSQL")
                svc.stop()
            finally:
                stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| database | operation | median |\n|---|---|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def postgres(tmp):
    versions = sorted(os.listdir("/usr/lib/postgresql")) if os.path.isdir("/usr/lib/postgresql") else []
    if not versions:
        print("(PostgreSQL not installed: `make postgres`; SQLite only)", file=sys.stderr)
        return None
    bin_ = f"/usr/lib/postgresql/{versions[-1]}/bin"
    d = os.path.join(tmp, "pg"); os.makedirs(d)
    pre = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres"); shutil.chown(d, "postgres")
    subprocess.run(pre + [f"{bin_}/initdb", "-D", f"{d}/data", "-U", "keygate", "--auth=trust", "--no-sync"],
                   check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    p = subprocess.Popen(pre + [f"{bin_}/postgres", "-D", f"{d}/data", "-p", str(port), "-k", d,
                                "-c", "listen_addresses=127.0.0.1"], stderr=subprocess.DEVNULL)
    for _ in range(200):
        if subprocess.run([f"{bin_}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                          stdout=subprocess.DEVNULL).returncode == 0:
            break
        time.sleep(0.1)
    subprocess.run([f"{bin_}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "keygate", "bench"], check=True)

    def stop():
        p.terminate(); p.wait()
    return f"postgres://keygate@127.0.0.1:{port}/bench", stop


if __name__ == "__main__":
    main()
