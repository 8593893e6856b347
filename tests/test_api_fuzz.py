"""schemathesis against the real app's OpenAPI document, in-process over ASGI, with two nurses of different units.

Every operation the document lists is fuzzed, bounded by MAX_EXAMPLES per operation and caller: no 5xx, every
response conforms to the document (status code, content type, headers, body schema), and no response to the ICU
nurse carries an object of another unit (any ``unit`` or ``bed`` field anywhere in the body).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devices.site import Site
from tests.auth import bearer
from tests.test_api_access import World

MAX_EXAMPLES = 4
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    made = World(tmp_path_factory.mktemp("api-fuzz"))
    yield made
    made.state.close()


def _foreign(body: Any, unit: str, beds: set[str], site: Site, path: str = "$") -> Iterator[str]:
    """Places in a JSON body that name a care unit other than ``unit`` or a bed outside ``beds``.

    ``unit`` is also the field of a measurement unit ("%"): only the site's unit ids count as care units.
    """
    if isinstance(body, dict):
        for key, value in body.items():
            here = f"{path}.{key}"
            if key in ("unit", "bed") and isinstance(value, str):
                foreign_unit = key == "unit" and value != unit and value in {u.id for u in site.units}
                foreign_bed = key == "bed" and value not in beds
                if foreign_unit or foreign_bed:
                    yield f"{here} = {value!r}"
            else:
                yield from _foreign(value, unit, beds, site, here)
    elif isinstance(body, list):
        for index, value in enumerate(body):
            yield from _foreign(value, unit, beds, site, f"{path}[{index}]")


@pytest.mark.parametrize("caller", ["n-icu", "n-w3"])
def test_every_operation_fuzzed_as_a_nurse(world: World, caller: str) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", world.app)
    unit = {"n-icu": "ICU", "n-w3": "W3"}[caller]
    beds = {b for u in world.site.units if u.id == unit for b in u.beds}
    headers = bearer(caller)
    results = list(schema.get_all_operations())
    assert all(isinstance(r, Ok) for r in results), "the OpenAPI document has an operation schemathesis cannot read"
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) > 50
    calls = seen = 0
    for operation in operations:

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(), data=st.data())
        def fuzz(case: Any, data: st.DataObject) -> None:
            nonlocal calls, seen
            calls += 1
            # Half the time a parameter names a real object (the ICU's, 3 West's or a missing one), so that
            # answers carry objects for the leak check below, not only 404s of random ids.
            for where in (case.path_parameters, case.query):
                for name in list(where or {}):
                    if name in world.params and data.draw(st.booleans()):
                        where[name] = data.draw(st.sampled_from(world.params[name]))
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            if response.status_code < 300 and "json" in response.headers.get("content-type", [""])[0]:
                body = response.json()
                seen += '"unit"' in response.text or '"bed"' in response.text
                leaks = list(_foreign(body, unit, beds, world.site))
                assert not leaks, f"{case.operation.label} answered {caller} with another unit's objects: {leaks[:3]}"

        fuzz()
    print(f"schemathesis: {len(operations)} operations, {calls} calls as {caller}, {seen} answers naming a unit or "
          "bed, no failure")
    assert seen > 5  # the leak check saw real objects, not only refusals
