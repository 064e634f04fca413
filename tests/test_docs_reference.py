"""The docs site: the API reference generated from protos/ is current and complete, and the site builds.

docs/reference/api.md and methods.md are written by tools/api_reference.py from the comments in
protos/ and committed (`make docs-reference`); `make docs` builds the site with --strict. These
tests fail on a stale reference, on an element of the contract the reference leaves out, on a
method the server answers that methods.md does not list, and on any warning of the strict build
(a page missing from the nav, a broken link or anchor, a missing snippet).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import grpc
import pytest
from databases import sqlite_url
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from helpers import require_tool
from lending.v1 import audit_pb2, auth_pb2, billing_pb2, events_pb2

from tools import api_reference

ROOT = Path(__file__).resolve().parent.parent
API_PAGE = ROOT / "docs" / "reference" / "api.md"
METHODS_PAGE = ROOT / "docs" / "reference" / "methods.md"
# The contract as the server loads it: the generated modules (generated/ has its own drift check).
PROTO_MODULES = (auth_pb2, billing_pb2, events_pb2, audit_pb2)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Reflection does not depend on the database: SQLite only."""
    return sqlite_url(tmp_path)


def sections(page: str) -> dict[str, str]:
    """Anchor -> the text of its section (up to the next heading) of a generated page."""
    found = {}
    parts = re.split(r"^#{2,6} .*? \{ #([\w-]+) \}$", page, flags=re.M)
    for anchor, text in zip(parts[1::2], parts[2::2], strict=True):
        found[anchor] = text
    return found


def methods_listed(page: str) -> dict[str, list[str]]:
    """Service full name -> the methods methods.md lists for it, in order."""
    listed: dict[str, list[str]] = {}
    service = None
    for line in page.splitlines():
        heading = re.match(r"\*\*`([\w.]+)`\*\*", line)
        if heading:
            service = listed.setdefault(heading.group(1), [])
            continue
        row = re.match(r"\| `(\w+)` \|", line)
        if row and service is not None:
            service.append(row.group(1))
    return listed


def all_messages(container):
    """Every message of a file or message descriptor, nested ones included (map entries excepted)."""
    if hasattr(container, "message_types_by_name"):
        children = container.message_types_by_name.values()
    else:
        children = container.nested_types
    for message in children:
        if not message.GetOptions().map_entry:
            yield message
            yield from all_messages(message)


# -- the committed reference -------------------------------------------------------------------


def test_the_committed_reference_is_what_the_protos_generate():
    stale = api_reference.stale(api_reference.generate())
    assert not stale, f"docs/reference/{', '.join(stale)} stale: run `make docs-reference` and commit"


def test_generating_twice_gives_the_same_bytes():
    assert api_reference.generate() == api_reference.generate()


def test_every_service_method_message_field_and_enum_value_is_in_the_api_reference():
    found = sections(API_PAGE.read_text(encoding="utf-8"))
    for module in PROTO_MODULES:
        file = module.DESCRIPTOR
        for service in file.services_by_name.values():
            anchor = api_reference.anchor_of(service.full_name)
            assert anchor in found, service.full_name
            for method in service.methods:
                text = found[api_reference.anchor_of(method.full_name)]
                assert f"`/{service.full_name}/{method.name}`" in text
                assert f"[`{method.input_type.name}`]" in text and f"[`{method.output_type.name}`]" in text
                if method.server_streaming:
                    assert "response stream [" in text and "Server streaming" in text
        for message in all_messages(file):
            text = found[api_reference.anchor_of(message.full_name)]
            for field in message.fields:
                assert re.search(rf"^\| `{field.name}` \| {field.number} \| ", text, re.M), field.full_name
        enums = list(file.enum_types_by_name.values())
        enums += [enum for message in all_messages(file) for enum in message.enum_types]
        for enum in enums:
            text = found[api_reference.anchor_of(enum.full_name)]
            for value in enum.values:
                assert re.search(rf"^\| `{value.name}` \| {value.number} \| ", text, re.M), value.name


def test_every_element_of_the_contract_has_a_comment():
    """The reference says only what the comments say: an element without one would be a blank in it."""
    api = api_reference.Api(api_reference.compile_protos())
    missing = []
    for file in api.files:
        for index, service in enumerate(file.service):
            paths = {service.name: (6, index)}
            paths |= {f"{service.name}.{m.name}": (6, index, 2, i) for i, m in enumerate(service.method)}
            missing += [name for name, path in paths.items() if not api.comment(file, path)]
    for element in [*api.messages.values(), *api.enums.values()]:
        if isinstance(element, api_reference.Message) and element.is_map_entry:
            continue
        members = element.proto.field if isinstance(element, api_reference.Message) else element.proto.value
        paths = {element.name: element.path}
        paths |= {f"{element.name}.{m.name}": (*element.path, 2, i) for i, m in enumerate(members)}
        missing += [name for name, path in paths.items() if not api.comment(element.file, path)]
    assert not missing, f"add a comment in protos/ to: {', '.join(missing)}"


def test_field_types_link_to_their_sections_and_well_known_types_are_named():
    page = API_PAGE.read_text(encoding="utf-8")
    found = sections(page)
    loan = found["lending-v1-Loan"]
    assert "| `state` | 9 | [`LoanState`](#lending-v1-LoanState) |  | ACTIVE until" in loan
    assert "| `create_time` | 10 | `google.protobuf.Timestamp` |" in loan
    assert "| `installments` | 2 | [`Installment`](#lending-v1-Installment) | repeated |" in page
    event = found["lending-v1-Event"]
    assert "| `payment` | 11 | [`Payment`](#lending-v1-Payment) | oneof `resource` |" in event
    # Every link of the page goes to a section of the page (the strict build checks it too).
    for anchor in re.findall(r"\]\(#([\w-]+)\)", page):
        assert anchor in found, anchor


def test_every_method_the_server_answers_is_in_methods_md(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reflection = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(reflection)
        served = {
            name: [method.name for method in pool.FindServiceByName(name).methods]
            for name in reflection.get_services()
        }
    assert {"lending.v1.BillingService", "grpc.health.v1.Health"} <= served.keys()
    # The same services, each with the same methods in the same order: nothing missing, nothing extra.
    assert methods_listed(METHODS_PAGE.read_text(encoding="utf-8")) == served


def test_methods_md_can_be_included_anywhere():
    page = METHODS_PAGE.read_text(encoding="utf-8")
    assert not re.search(r"^#", page, re.M), "a title would be a second one in the including page"
    assert "](" not in page, "a relative link breaks in a page at another depth"


# -- the generator on a contract of its own -------------------------------------------------------


def test_labels_nested_types_maps_streams_and_escaping(tmp_path: Path):
    (tmp_path / "demo" / "v1").mkdir(parents=True)
    (tmp_path / "demo" / "v1" / "demo.proto").write_text(
        """syntax = "proto3";
package demo.v1;
import "google/protobuf/duration.proto";

// Shop sells *things* to <people> | pipes. Second sentence.
service Shop {
  // Upload takes a stream. It says `a|b <c>` in code.
  rpc Upload(stream Part) returns (Order);
  rpc Chat(stream Part) returns (stream Part);
}

// Order is an order.
message Order {
  // Lines, keyed by SKU.
  map<string, Line> lines = 1;
  optional int32 priority = 2;
  oneof paid_by {
    // By card; see 7*k and 2*x.
    string card = 3;
  }
  google.protobuf.Duration wait = 4;
  // A line.
  message Line {
    uint64 quantity = 1;
    Kind kind = 2;
    enum Kind {
      KIND_UNSPECIFIED = 0;
      // _Spare_ parts.
      KIND_SPARE = 1;
    }
  }
}

message Part { bytes data = 1; }
""",
        encoding="utf-8",
    )
    pages = api_reference.generate(tmp_path)
    api, methods = pages["api.md"], pages["methods.md"]
    assert pages == api_reference.generate(tmp_path)
    found = sections(api)
    order = found["demo-v1-Order"]
    assert (
        "| `lines` | 1 | map&lt;`string`, [`Order.Line`](#demo-v1-Order-Line)&gt; |  | Lines, keyed by SKU. |"
        in (order)
    )
    assert "| `priority` | 2 | `int32` | optional | — |" in order
    assert r"| `card` | 3 | `string` | oneof `paid_by` | By card; see 7\*k and 2\*x. |" in order
    assert "| `wait` | 4 | `google.protobuf.Duration` |  | — |" in order
    assert "demo-v1-Order-LinesEntry" not in found  # map entries are not messages of the contract
    assert (
        "| `kind` | 2 | [`Order.Line.Kind`](#demo-v1-Order-Line-Kind) |  | — |" in found["demo-v1-Order-Line"]
    )
    assert r"| `KIND_SPARE` | 1 | \_Spare\_ parts. |" in found["demo-v1-Order-Line-Kind"]
    assert r"Shop sells \*things\* to &lt;people&gt; \| pipes." in found["demo-v1-Shop"]
    upload = found["demo-v1-Shop-Upload"]
    assert "request stream [`Part`](#demo-v1-Part)" in upload and "Client streaming" in upload
    assert "It says `a|b <c>` in code." in upload
    assert "Bidirectional streaming." in found["demo-v1-Shop-Chat"]
    assert r"**`demo.v1.Shop`**: Shop sells \*things\* to &lt;people&gt; \| pipes." in methods
    assert "| `Upload` | stream `Part` | `Order` | Upload takes a stream. |" in methods
    assert "| `Chat` | stream `Part` | stream `Part` | — |" in methods


# -- the site -------------------------------------------------------------------------------------


def test_the_site_builds_strict(tmp_path: Path):
    mkdocs = require_tool("mkdocs", "pip install -e '.[dev]' installs it (the docs extra)")
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="lending-v1-BillingService-MakePayment"' in api
    changelog = (tmp_path / "site" / "changelog" / "index.html").read_text(encoding="utf-8")
    assert "Unreleased" in changelog  # CHANGELOG.md, included by a snippet
