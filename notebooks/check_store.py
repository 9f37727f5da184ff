"""Opens every table of a roadwork store with Python lancedb and checks it against what
`roadwork store info --json` says: the same tables, row counts, column names and types (vector
columns: fixed-size lists of float32 of the stated length). Exit status 1 on any difference.

    python notebooks/check_store.py roadwork-data/store info.json
"""

import json
import sys

import lancedb
import pyarrow as pa

# Arrow's Rust spelling (roadwork store info) → the pyarrow type it must be.
SIMPLE = {
    "Utf8": pa.string(),
    "LargeUtf8": pa.large_string(),
    "Binary": pa.binary(),
    "LargeBinary": pa.large_binary(),
    "UInt8": pa.uint8(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "Float32": pa.float32(),
    "Float64": pa.float64(),
    "Boolean": pa.bool_(),
}


def expected_type(col):
    t = col["type"]
    if t in SIMPLE:
        return SIMPLE[t]
    if t.startswith("Timestamp(µs") or t.startswith("Timestamp(Microsecond"):
        return pa.timestamp("us", tz="UTC")
    if t.startswith("List(") and "Utf8" in t:
        return "list<string>"
    if "list_size" in col:
        return ("vector", col["list_size"])
    return None


def table_names(db):
    names, token = [], None
    while True:
        page = db.list_tables(page_token=token)
        names += page.tables
        token = page.page_token
        if not token:
            return sorted(names)


def main(store, info_path):
    info = json.load(open(info_path))
    db = lancedb.connect(store)
    problems = []
    found = table_names(db)
    wanted = sorted(t["name"] for t in info["tables"])
    if found != wanted:
        problems.append(f"tables differ: python sees {found}, store info says {wanted}")
    for t in info["tables"]:
        if t["name"] not in found:
            continue
        tbl = db.open_table(t["name"])
        rows = tbl.count_rows()
        if rows != t["rows"]:
            problems.append(f"{t['name']}: {rows} rows in python, {t['rows']} in store info")
        schema = tbl.schema
        if schema.names != [c["name"] for c in t["columns"]]:
            problems.append(f"{t['name']}: columns {schema.names} vs {[c['name'] for c in t['columns']]}")
            continue
        for c in t["columns"]:
            field = schema.field(c["name"])
            want = expected_type(c)
            got = field.type
            if want is None:
                problems.append(f"{t['name']}.{c['name']}: no python type known for {c['type']}")
            elif isinstance(want, tuple):
                ok = (pa.types.is_fixed_size_list(got) and got.list_size == want[1]
                      and got.value_type == pa.float32())
                if not ok:
                    problems.append(f"{t['name']}.{c['name']}: {got}, expected float32 vectors of {want[1]}")
            elif want == "list<string>":
                if not (pa.types.is_list(got) and pa.types.is_string(got.value_type)):
                    problems.append(f"{t['name']}.{c['name']}: {got}, expected list<string>")
            elif got != want:
                problems.append(f"{t['name']}.{c['name']}: {got}, expected {want} ({c['type']})")
            if field.nullable != c["nullable"]:
                problems.append(f"{t['name']}.{c['name']}: nullable {field.nullable}, expected {c['nullable']}")
        # Reading the rows works, and vectors come out as float32 matrices of the stated width.
        for c in t["columns"]:
            if "list_size" in c and rows:
                col = tbl.search().select([c["name"]]).limit(None).to_arrow()[c["name"]]
                width = {len(v) for v in col.to_pylist()}
                if width != {c["list_size"]}:
                    problems.append(f"{t['name']}.{c['name']}: vector lengths {width}")
    tags = {s["name"] for s in info["snapshots"]}
    for s in info["snapshots"]:
        for table, version in s["versions"].items():
            tbl = db.open_table(table)
            tag = s["name"].replace("/", "__")
            listed = tbl.tags.list()
            if tag not in listed or listed[tag]["version"] != version:
                problems.append(f"snapshot {s['name']}: {table} tag {tag} is {listed.get(tag)}, expected version {version}")
    for p in problems:
        print("MISMATCH", p)
    print(f"checked {len(info['tables'])} tables, {len(tags)} snapshots: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
