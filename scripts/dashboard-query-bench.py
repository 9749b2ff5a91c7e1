#!/usr/bin/env python3
"""The dashboard aggregate on a 1M-decision SQLite log, with and without its reward join (docs/results/dashboard.md).
Usage: python3 scripts/dashboard-query-bench.py [DB_PATH]   (builds the log on first use, ~1 min, ~2 GB)"""
import sqlite3, os, time, random, uuid
import sys
p=sys.argv[1] if len(sys.argv) > 1 else '/tmp/mappo-dashboard-bench.db'
if not os.path.exists(p):
    c=sqlite3.connect(p)
    c.executescript("""
PRAGMA journal_mode=WAL;
CREATE TABLE decisions (id BLOB PRIMARY KEY, time_us BIGINT NOT NULL, policy_version BIGINT, action BIGINT, agent TEXT, kind TEXT, probabilities BLOB, embedding BLOB, cost_weight DOUBLE PRECISION, shadow_version BIGINT, shadow_action BIGINT);
CREATE INDEX decisions_time_id ON decisions (time_us, id);
CREATE TABLE rewards (decision_id BLOB PRIMARY KEY REFERENCES decisions (id), reward DOUBLE PRECISION NOT NULL, time_us BIGINT NOT NULL);
CREATE INDEX decisions_dashboard ON decisions (time_us, agent, kind, action, cost_weight, shadow_version, shadow_action, id);
""")
    emb=os.urandom(1536)
    agents=['code','math','writing','support']
    N=1_000_000
    step=3600_000_000//N
    for s in range(0,N,10000):
        rows=[]; rw=[]
        for i in range(s,s+10000):
            idb=uuid.uuid4().bytes
            rows.append((idb,i*step,1,i%4,agents[i%4],'greedy' if i%10==0 else 'sampled',b'x'*16,emb))
            if i%3==0: rw.append((idb,float(i%2),i*step+5))
        c.executemany("INSERT INTO decisions (id,time_us,policy_version,action,agent,kind,probabilities,embedding) VALUES (?,?,?,?,?,?,?,?)",rows)
        c.executemany("INSERT INTO rewards VALUES (?,?,?)",rw)
        c.commit()
    c.execute("ANALYZE"); c.commit(); c.close()
c=sqlite3.connect(p)
N=1_000_000; step=3600
lo=(N-100000)*step
G="""SELECT d.time_us / 60000000 AS b, d.agent, d.kind, COUNT(*), COUNT(r.decision_id), SUM(r.reward), SUM(r.reward*r.reward), COUNT(d.cost_weight), SUM(d.cost_weight), MIN(d.cost_weight), MAX(d.cost_weight), COUNT(d.shadow_action), COUNT(CASE WHEN d.shadow_action = d.action THEN 1 END), MAX(d.shadow_version) FROM decisions d {idx} LEFT JOIN rewards r ON r.decision_id = d.id WHERE d.time_us >= ? AND d.time_us < ? GROUP BY 1,2,3"""
def t(q, args, n=7):
    ts=[]
    for _ in range(n):
        a=time.perf_counter(); c.execute(q,args).fetchall(); ts.append(time.perf_counter()-a)
    ts.sort(); return ts[len(ts)//2]*1000
print("plan:", list(c.execute("EXPLAIN QUERY PLAN "+G.format(idx=""),(lo,N*step))))
print("groups+join ms", t(G.format(idx=""),(lo,N*step)))
print("groups no join ms", t(G.replace("LEFT JOIN rewards r ON r.decision_id = d.id","").replace("r.decision_id","NULL").replace("r.reward","NULL").format(idx=""),(lo,N*step)))
print("cut offset ms", t("SELECT time_us, id FROM decisions WHERE time_us >= ? AND time_us < ? ORDER BY time_us DESC, id DESC LIMIT 1 OFFSET 100000",(0,N*step)))
c.execute("CREATE INDEX IF NOT EXISTS rewards_cover ON rewards (decision_id, reward)")
print("groups+join covering rewards ms", t(G.format(idx=""),(lo,N*step)))
print("plan2:", list(c.execute("EXPLAIN QUERY PLAN "+G.format(idx=""),(lo,N*step))))
c.execute("DROP INDEX rewards_cover")
