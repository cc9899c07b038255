#!/usr/bin/env bash
# Benchmark xwebhook side by side with nginx (a fixed answer of the same
# length: the ceiling for an HTTP server on this machine) and with the
# tutorial's Flask + waitress app (what users run today), all in one run on
# loopback, so that the noise of a shared machine cancels in the ratios.
#
#   tests/bench.sh            (DURATION=10 seconds per wrk run by default)
#
# Not part of ./test.sh. Needs: wrk nginx-light jq python3-flask
# python3-waitress libbearssl-dev openssl redis-server redis-tools
# nats-server pebble lego valgrind (all Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."

D=${DURATION:-10}
W=$(mktemp -d /tmp/xwebhook-bench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT

for tool in wrk nginx jq python3 openssl cc strip redis-server redis-cli nats-server pebble lego valgrind; do
	command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install wrk nginx-light jq python3-flask python3-waitress libbearssl-dev openssl redis-server redis-tools nats-server pebble lego valgrind)" >&2; exit 1; }
done

echo "building with -O2 ..." >&2
cc -O2 -o "$W/xwebhook" xwebhook.c
cc -O2 -DXWEBHOOK_TLS -o "$W/xwebhook-tls" xwebhook.c -lbearssl
strip -o "$W/xwebhook.stripped" "$W/xwebhook"
strip -o "$W/xwebhook-tls.stripped" "$W/xwebhook-tls"

export TWITTER_CONSUMER_SECRET=bench-consumer-secret
TOKEN=M2RkODJkZmMtYjlkYi00NmQ4LTk0MGUtM2JjYzkwM2Q4MjQ0
CRC="/webhooks/twitter?crc_token=$TOKEN&nonce=MTc2OTUxODI5MjkxNA"
ANSWER=$("$W/xwebhook" crc "$TOKEN")
R="$W/results"
: >"$R"
result() { echo "$1 $2" >>"$R"; }

# A 2 KB signed event, as a wrk script.
python3 - "$W" <<'EOF'
import base64, hashlib, hmac, json, os, sys
w = sys.argv[1]
event = {"for_user_id": "2244994945", "tweet_create_events": [{"id_str": "1346889436626259968",
         "text": "", "user": {"id_str": "2244994945", "screen_name": "XDevelopers"}}]}
base = len(json.dumps(event, separators=(",", ":")))
event["tweet_create_events"][0]["text"] = "x" * (2048 - base)
body = json.dumps(event, separators=(",", ":"))
assert len(body) == 2048
sig = "sha256=" + base64.b64encode(hmac.new(os.environ["TWITTER_CONSUMER_SECRET"].encode(), body.encode(),
                                            hashlib.sha256).digest()).decode()
with open(os.path.join(w, "post.lua"), "w") as f:
    f.write('wrk.method = "POST"\nwrk.body = [[%s]]\nwrk.headers["Content-Type"] = "application/json"\n'
            'wrk.headers["x-twitter-webhooks-signature"] = "%s"\n' % (body, sig))
EOF

# Certificates for the TLS runs: ECDSA P-256 and RSA-2048.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/ec.key" -out "$W/ec.pem" \
	-days 2 -subj /CN=bench.test 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/rsa.key" -out "$W/rsa.pem" \
	-days 2 -subj /CN=bench.test 2>/dev/null

# nginx: a fixed answer of the same length, no logging, as fast as it goes.
mkdir -p "$W/nginx"
cat >"$W/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path $W/nginx/body;
	proxy_temp_path $W/nginx/proxy;
	fastcgi_temp_path $W/nginx/fastcgi;
	uwsgi_temp_path $W/nginx/uwsgi;
	scgi_temp_path $W/nginx/scgi;
	keepalive_requests 10000000;
	ssl_protocols TLSv1.2;
	ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
	server {
		listen 127.0.0.1:18102;
		listen 127.0.0.1:18105 ssl;
		ssl_certificate $W/ec.pem;
		ssl_certificate_key $W/ec.key;
		location /webhooks/twitter { default_type application/json; return 200 '$ANSWER'; }
	}
	server {
		listen 127.0.0.1:18107 ssl;
		ssl_certificate $W/rsa.pem;
		ssl_certificate_key $W/rsa.key;
		location /webhooks/twitter { default_type application/json; return 200 '$ANSWER'; }
	}
}
EOF

start() {  # name, then the command; its stdout goes to /dev/null
	local name=$1; shift
	"$@" >/dev/null 2>"$W/$name.err" &
	PIDS+=($!)
	eval "PID_$name=$!"
}
start nginx nginx -c "$W/nginx.conf" -e "$W/nginx/error.log"
start xw "$W/xwebhook" --quiet --listen 127.0.0.1:18101
# Debian's python3-flask and python3-waitress belong to /usr/bin/python3.
start ref env PORT=18103 "${REF_PYTHON:-/usr/bin/python3}" tests/reference_app.py
start xwtls "$W/xwebhook-tls" --quiet --listen 127.0.0.1:18104 --cert "$W/ec.pem" --key "$W/ec.key"
start xwrsa "$W/xwebhook-tls" --quiet --listen 127.0.0.1:18106 --cert "$W/rsa.pem" --key "$W/rsa.key"
# The --output file on the disk the repository is on, never tmpfs, where
# fdatasync costs nothing: the row measures group commit.
mkdir -p tests/out
rm -f tests/out/bench-events.jsonl
start xwout "$W/xwebhook" --quiet --listen 127.0.0.1:18108 --output tests/out/bench-events.jsonl
# A Redis of its own for --forward: in memory, as the forwarding is what
# is measured (with appendfsync always, the disk would be). The stream is
# trimmed, as a stream left running must be: untrimmed, three rounds of
# 2 KB events grow Redis by gigabytes, and the row measures the kernel
# zeroing pages for it rather than the forwarding.
start redis redis-server --port 18110 --bind 127.0.0.1 --save "" --appendonly no
for _ in $(seq 50); do redis-cli -p 18110 ping >/dev/null 2>&1 && break; sleep 0.1; done
start xwredis "$W/xwebhook" --quiet --listen 127.0.0.1:18109 --forward "redis://127.0.0.1:18110/bench?maxlen=100000"
# A NATS of its own, JetStream in memory for the same reason and with the
# same bound (max_msgs, discarding the oldest); its stream made over the
# protocol (Debian has no NATS CLI).
start nats nats-server -js -sd "$W/js" -a 127.0.0.1 -p 18112
python3 - <<'PY'
import json, socket, time
for _ in range(50):
    try:
        s = socket.create_connection(("127.0.0.1", 18112), timeout=5)
        break
    except OSError:
        time.sleep(0.1)
f = s.makefile("rb")
f.readline()
conf = {"name": "BENCH", "subjects": ["bench"], "storage": "memory", "max_msgs": 100000}
body = json.dumps(conf).encode()
s.sendall(b'CONNECT {"verbose":false}\r\nSUB _INBOX.b 1\r\nPUB $JS.API.STREAM.CREATE.BENCH _INBOX.b %d\r\n%s\r\n'
          % (len(body), body))
while not f.readline().startswith(b"MSG"):
    pass
PY
start xwnats "$W/xwebhook" --quiet --listen 127.0.0.1:18111 --forward nats://127.0.0.1:18112/bench
# --metrics, scraped every second as Prometheus would, against the same
# server without it (18101): counting must cost the hot path nothing.
start xwmet "$W/xwebhook" --quiet --listen 127.0.0.1:18113 --metrics 127.0.0.1:18114
start scraper bash -c 'while :; do curl -s -o /dev/null http://127.0.0.1:18114/metrics; sleep 1; done'
for port in 18101 18102 18103 18104 18105 18106 18107 18108 18109 18111 18113 18114; do
	up=0
	for _ in $(seq 100); do
		if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then up=1; break; fi
		sleep 0.1
	done
	if [ "$up" = 0 ]; then
		echo "bench: nothing listens on port $port:" >&2
		tail -n 5 "$W"/*.err >&2
		exit 1
	fi
done
sleep 0.5

# The share of CPU time the hypervisor took for other guests (steal) over
# a run: on a shared VM it swings, and a run that lost much of the
# machine measures the neighbours as much as us.
cpu_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $9}' /proc/stat; }
steal_pct() {  # before-ticks before-steal after-ticks after-steal
	awk -v a="$1" -v b="$2" -v c="$3" -v d="$4" 'BEGIN {printf "%.0f", (c > a) ? 100 * (d - b) / (c - a) : 0}'
}

# wrk NAME URL [wrk options]: requests per second, p99 latency and steal.
bench() {
	local name=$1 url=$2; shift 2
	local before after
	echo "wrk $name ..." >&2
	before=$(cpu_ticks)
	wrk -t2 -c64 -d"${D}s" --latency "$@" "$url" >"$W/wrk-$name.txt" 2>&1
	after=$(cpu_ticks)
	# shellcheck disable=SC2086
	result "$name.steal" "$(steal_pct $before $after)"
	result "$name.rps" "$(awk '/^Requests\/sec/ {print $2}' "$W/wrk-$name.txt")"
	result "$name.p99" "$(awk '$1 == "99%" {print $2}' "$W/wrk-$name.txt")"
	result "$name.errors" "$(awk '/Non-2xx|Socket errors/ {print}' "$W/wrk-$name.txt" | tr '\n' ' ' | tr ' ' '_')"
}

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
result xw.rss_idle "$(rss "$PID_xw")"
result xwtls.rss_idle "$(rss "$PID_xwtls")"

bench crc.ref "http://127.0.0.1:18103$CRC"
# The CRC and signed-POST rows are ratios of one another, so they run in
# ROUNDS rounds and each keeps its median (rate and p99): a slow spell of
# a shared machine then falls on every row of a round alike, not on one
# row. (On a 2-core machine, back-to-back runs of one server have differed
# by a quarter in rate and nearly 2x in p99.) The two runs of a ratio are
# next to each other, and every other round runs in the reverse order, so
# that neither side of a ratio always follows the same run.
ROUNDS=${ROUNDS:-5}
RUNS=("crc.xw 18101 crc" "crc.met 18113 crc" "crc.nginx 18102 crc"
	"post.xw 18101 post" "post.met 18113 post" "post.nginx 18102 post"
	"post.out 18108 post" "post.redis 18109 post" "post.nats 18111 post")
for ((k = 1; k <= ROUNDS; k++)); do
	order=("${RUNS[@]}")
	if ((k % 2 == 0)); then
		order=()
		for ((i = ${#RUNS[@]} - 1; i >= 0; i--)); do order+=("${RUNS[i]}"); done
	fi
	for run in "${order[@]}"; do
		read -r name port what <<<"$run"
		if [ "$what" = crc ]; then
			bench "$name.r$k" "http://127.0.0.1:$port$CRC"
		else
			bench "$name.r$k" "http://127.0.0.1:$port/webhooks/twitter" -s "$W/post.lua"
		fi
	done
done

median() {  # NAME FIELD: the median of the rounds' NAME.rK.FIELD
	awk -v n="$1" -v f="$2" '$1 ~ "^" n "\\.r[0-9]+\\." f "$" {print $2}' "$R" |
	    python3 "$W/median.py"
}
cat >"$W/median.py" <<'PY'
import sys
def value(v):  # wrk's latencies carry their unit
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[:-len(unit)]) * f, "ms"
    return float(v), ""
vs = sorted(value(line.strip()) for line in sys.stdin if line.strip())
v, unit = vs[(len(vs) - 1) // 2]
print("%g%s" % (v, unit))
PY
for run in "${RUNS[@]}"; do
	name=${run%% *}
	result "$name.rps" "$(median "$name" rps)"
	result "$name.p99" "$(median "$name" p99)"
	result "$name.rounds" "$(awk -v n="$name" '$1 ~ "^" n "\\.r[0-9]+\\.rps$" {printf "%d ", $2}' "$R")"
done
bench post.ref "http://127.0.0.1:18103/webhooks/twitter" -s "$W/post.lua"
bench tls.xw "https://127.0.0.1:18104$CRC"
bench tls.nginx "https://127.0.0.1:18105$CRC"
# Full handshakes: openssl s_time -new never resumes a session (wrk does,
# which would measure resumption). Two clients at once, one per core.
handshakes() {
	local name=$1 port=$2 total=0 i
	echo "s_time $name ..." >&2
	local clients=()
	for i in 1 2; do
		openssl s_time -connect "127.0.0.1:$port" -new -time "$D" >"$W/stime-$name-$i.txt" 2>&1 &
		clients+=($!)
	done
	wait "${clients[@]}" || true
	for i in 1 2; do
		# "N connections in T real seconds, B bytes read per connection"
		n=$(awk '/connections in .* real seconds/ {print $1 / $4}' "$W/stime-$name-$i.txt" | tail -n 1)
		total=$(python3 -c "print($total + ${n:-0})")
	done
	result "$name.rps" "$total"
}
handshakes hs_ec.xw 18104
handshakes hs_ec.nginx 18105
handshakes hs_rsa.xw 18106
handshakes hs_rsa.nginx 18107

# Memory with 1,000 idle connections.
python3 - "$PID_xw" "$R" <<'EOF'
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
pid, results = sys.argv[1], sys.argv[2]
held = [socket.create_connection(("127.0.0.1", 18101)) for _ in range(1000)]
time.sleep(1.5)
rss = [l.split()[1] for l in open("/proc/%s/status" % pid) if l.startswith("VmRSS")][0]
with open(results, "a") as f:
    f.write("xw.rss_1000 %s\n" % rss)
EOF
result xw.size "$(stat -c %s "$W/xwebhook.stripped")"
result xwtls.size "$(stat -c %s "$W/xwebhook-tls.stripped")"

# What --metrics costs a request in instructions (callgrind), which no
# noise moves: the rate rows above can only say "within a few percent".
echo "instructions per request, with --metrics and without (callgrind) ..." >&2
python3 tests/bench_instr.py "$W/xwebhook" "$W/post.lua" >>"$R" || exit 1

# fmt against jq and Python on a 50 MB file.
echo "fmt, jq and json.tool on 50 MB ..." >&2
python3 - "$W/big.json" <<'EOF'
import glob, json, sys
events = [json.load(open(f)) for f in sorted(glob.glob("tests/fixtures/*.json"))]
out, size = [], 0
while size < 50 * 1000 * 1000:
    for e in events:
        s = json.dumps(e, ensure_ascii=False)
        out.append(s)
        size += len(s.encode()) + 2
open(sys.argv[1], "w").write("[" + ",\n".join(out) + "]\n")
EOF
result fmt.bytes "$(stat -c %s "$W/big.json")"
timed() {  # seconds a command takes, stdout discarded
	local t0 t1
	t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
	echo "$t1 - $t0" | bc -l 2>/dev/null || python3 -c "print($t1 - $t0)"
}
result fmt.xw "$(timed "$W/xwebhook" fmt "$W/big.json")"
result fmt.jq "$(timed jq . "$W/big.json")"
result fmt.py "$(timed python3 -m json.tool "$W/big.json")"

# ACME: from start to serving a pebble-issued certificate, xwebhook --acme
# against lego obtaining one, same pebble, same challenge (tls-alpn-01).
echo "ACME: xwebhook --acme and lego against pebble, 5 runs each ..." >&2
python3 tests/acme_bench.py "$W/xwebhook-tls" tests/fixtures 5 >>"$R" || exit 1

echo >&2
python3 - "$R" "$D" <<'EOF'
import sys
r = {}
for line in open(sys.argv[1]):
    k, _, v = line.strip().partition(" ")
    r[k] = v


def num(k):
    return float(r[k])


def ms(k):
    v = r[k]
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if v.endswith(unit):
            return float(v[:-len(unit)]) * f
    return float(v)


rows = []


def row(what, ours, theirs, ratio, target, ok):
    rows.append((what, ours, theirs, ratio, target, "yes" if ok else "NO"))


def rounds(name, field):
    """The rounds' values of name's field, by round number."""
    out = {}
    for k, v in r.items():
        parts = k.split(".")
        if k.startswith(name + ".r") and parts[-1] == field and len(parts) == len(name.split(".")) + 2:
            out[int(parts[-2][1:])] = ms(k) if field == "p99" else float(v)
    return out


def ratio(a, b, field):
    """a's field over b's: with rounds on both sides, the median of each
    round's ratio (the two ran back to back, so what the machine was doing
    then weighs on both); else the one run's."""
    ra, rb = rounds(a, field), rounds(b, field)
    if ra and rb:
        q = sorted(ra[k] / rb[k] for k in ra if k in rb)
        return q[(len(q) - 1) // 2], " (median of %d rounds)" % len(q)
    return (num(a + ".rps") / num(b + ".rps") if field == "rps" else ms(a + ".p99") / ms(b + ".p99")), ""


def rate(what, a, b, target=None):
    ra = num(a + ".rps")
    rb = num(b + ".rps")
    q, how = ratio(a, b, "rps")
    what += how
    if target is None:  # measured for information; the issue sets no target
        rows.append((what, "%.0f/s" % ra, "%.0f/s" % rb, "%.2f" % q, "", ""))
        return
    row(what, "%.0f/s" % ra, "%.0f/s" % rb, "%.2f" % q, ">= %g" % target, q >= target)


rate("CRC, kept alive: xwebhook vs nginx", "crc.xw", "crc.nginx", 1.0)
rate("CRC, kept alive: xwebhook vs reference app", "crc.xw", "crc.ref", 30)
a, b = ms("crc.xw.p99"), ms("crc.nginx.p99")
q, how = ratio("crc.xw", "crc.nginx", "p99")
row("CRC p99 latency: xwebhook vs nginx" + how, "%.2f ms" % a, "%.2f ms" % b, "%.2f" % q, "<= 1", q <= 1)
rate("signed 2 KB POST (stdout /dev/null) vs nginx", "post.xw", "post.nginx", 0.8)
rate("signed 2 KB POST vs reference app", "post.xw", "post.ref", 1)
rate("signed 2 KB POST, --output (group commit) vs without", "post.out", "post.xw", 0.5)
rate("signed 2 KB POST, --forward redis:// vs without", "post.redis", "post.xw", 0.5)
rate("signed 2 KB POST, --forward nats:// vs without", "post.nats", "post.xw", 0.5)
rate("signed 2 KB POST, --metrics scraped every second vs without", "post.met", "post.xw", 0.98)
rate("CRC, kept alive, --metrics scraped every second vs without", "crc.met", "crc.xw", 0.98)
for kind, what in (("crc", "CRC"), ("post", "signed 2 KB POST")):
    a, b = num("instr.%s.met" % kind), num("instr.%s.plain" % kind)
    row("instructions per %s, --metrics vs without (callgrind)" % what, "%.0f" % a, "%.0f" % b, "%.3f" % (a / b),
        "<= 1.02", a / b <= 1.02)
rss_idle = num("xw.rss_idle") / 1024
row("resident memory, idle (plain build)", "%.2f MB" % rss_idle, "", "", "<= 2 MB", rss_idle <= 2)
rss_k = num("xw.rss_1000") / 1024
row("resident memory, 1,000 idle connections", "%.1f MB" % rss_k, "", "", "<= 64 MB", rss_k <= 64)
rows.append(("resident memory, idle (TLS build, key loaded)", "%.2f MB" % (num("xwtls.rss_idle") / 1024), "", "", "", ""))
rows.append(("stripped binary (plain / TLS)", "%d / %d KB" % (num("xw.size") / 1024, num("xwtls.size") / 1024), "", "", "", ""))
mb = num("fmt.bytes") / 1e6
for other, name, target in (("fmt.jq", "jq .", 10), ("fmt.py", "python3 -m json.tool", 1)):
    row("fmt on %.0f MB vs %s" % (mb, name), "%.0f MB/s" % (mb / num("fmt.xw")), "%.1f MB/s" % (mb / num(other)),
        "%.1f" % (num(other) / num("fmt.xw")), ">= %g" % target, num(other) / num("fmt.xw") >= target)
rate("TLS: CRC kept alive vs nginx (ECDSA P-256)", "tls.xw", "tls.nginx", 0.8)
rate("TLS: full handshakes, ECDSA P-256, vs nginx", "hs_ec.xw", "hs_ec.nginx", 0.5)
rate("TLS: full handshakes, RSA-2048, vs nginx", "hs_rsa.xw", "hs_rsa.nginx")
a, b = num("acme.xw"), num("acme.lego")
row("ACME (pebble, tls-alpn-01): start to serving vs lego run", "%.2f s" % a, "%.2f s" % b, "%.2f" % (a / b),
    "<= 1", a <= b)

w = [max(len(str(x[i])) for x in rows + [("", "xwebhook", "other", "ratio", "target", "met")]) for i in range(6)]
head = ("measured (wrk -t2 -c64 -d%ss, loopback)" % sys.argv[2], "xwebhook", "other", "ratio", "target", "met")
print(" | ".join(str(h).ljust(w[i]) for i, h in enumerate(head)))
print("-|-".join("-" * w[i] for i in range(6)))
for x in rows:
    print(" | ".join(str(v).ljust(w[i]) for i, v in enumerate(x)))
print("(with rounds: each rate is the median of its rounds, each ratio the median of the rounds' own ratios)")
for k in sorted(k for k in r if k.endswith(".rounds")):
    print("rounds: %s: %s requests/s" % (k[:-7], r[k]))
steal = {k[:-6]: int(r[k]) for k in r if k.endswith(".steal")}
worst = max(steal, key=steal.get)
print("steal (CPU time the hypervisor gave other guests): at most %d%% of a run (%s)" % (steal[worst], worst))
if steal[worst] > 5:
    print("note: runs with more than 5%% steal measure the neighbours too: %s"
          % ", ".join("%s %d%%" % (k, v) for k, v in sorted(steal.items()) if v > 5))
errs = [k for k in r if k.endswith(".errors") and r[k]]
for k in errs:
    print("note: %s: %s" % (k[:-7], r[k].replace("_", " ").strip()))
EOF
