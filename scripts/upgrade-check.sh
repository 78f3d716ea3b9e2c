#!/usr/bin/env bash
# Upgrade with runs in flight, with the real previous release: builds neroman/neromum/nerokid
# 0.1.0 (protocol 1, commit 8fe39aa) from this repository's history, starts four runs with it,
# then lets the current neroman take over (it asks the old agent to hand over; the new agent
# adopts the runs from the journal). Prints each run's state and how many metric lines reached
# the store (each must be 40, once each). Needs the git history (not a shallow clone), so it is
# a manual check, not part of scripts/test.sh; CI covers the handshake with a stand-in agent.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=8fe39aa
work=$(mktemp -d)
trap 'pkill -f "neromum serve --workdir $work" || true; git worktree remove --force "$work/src" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach "$work/src" "$OLD" >/dev/null
echo "== building $OLD (its own target dir)"
CARGO_TARGET_DIR="$work/target" cargo build --quiet --bins --manifest-path "$work/src/Cargo.toml" --workspace
echo "== building the current version"
cargo build --quiet --workspace --bins
old="$work/target/debug"
new="$PWD/target/debug"
proj="$work/project"
mkdir -p "$proj"
cat > "$proj/job.py" <<'PY'
import time
for i in range(40):
    print(f"step={i} loss={1/(i+1):.4f}", flush=True); time.sleep(0.2)
PY
printf 'command: python3 job.py\nclusters:\n  local:\n    max_parallel: 4\n' > "$proj/neronet.yaml"
python3 - "$proj" <<'PY'
import sys, zipfile
# A minimal workbook: id and status columns, rows 1-4 (written by the old version's template
# code would need the old binary; this is plain SpreadsheetML).
d = sys.argv[1]
sheet = '<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>id</t></is></c><c r="B1" t="inlineStr"><is><t>status</t></is></c></row>' + ''.join(f'<row r="{i+1}"><c r="A{i+1}"><v>{i}</v></c></row>' for i in range(1, 5)) + '</sheetData></worksheet>'
with zipfile.ZipFile(f"{d}/experiments.xlsx", "w") as z:
    z.writestr("[Content_Types].xml", '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>')
    z.writestr("_rels/.rels", '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>')
    z.writestr("xl/workbook.xml", '<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="experiments" sheetId="1" r:id="rId1"/></sheets></workbook>')
    z.writestr("xl/_rels/workbook.xml.rels", '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/></Relationships>')
    z.writestr("xl/worksheets/sheet1.xml", sheet)
PY
echo "== old version starts four runs"
"$old/neroman" --dir "$proj" start all
sleep 2
"$old/neroman" --dir "$proj" status
echo "== the current version takes over"
"$new/neroman" --dir "$proj" status
"$new/neroman" --dir "$proj" agents
while "$new/neroman" --dir "$proj" status --json | grep -q '"state": "running"'; do sleep 1; done
"$new/neroman" --dir "$proj" status
python3 - "$proj/.neronet/state.db" <<'PY'
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute(
    "SELECT run_uid, COUNT(*), COUNT(DISTINCT value) FROM metrics WHERE name='step' GROUP BY run_uid").fetchall()
print("metric lines stored per run (count, distinct):", rows)
assert len(rows) == 4 and all(n == d == 40 for _, n, d in rows), "lost or doubled metrics"
print("upgrade check: OK")
PY
"$new/neroman" --dir "$proj" agents --stop
