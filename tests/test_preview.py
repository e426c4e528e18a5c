import io
import json

from conftest import FIXED_NOW, PIPELINES

from runner import spec
from runner.commands.preview import preview

SAMPLE = (PIPELINES / "samples" / "session.json").read_text().strip()


def test_preview_shows_the_scenario_records_route_and_attributes_at_the_clocks_time():
    out = io.StringIO()

    code = preview(
        spec.load(PIPELINES / "ecommerce.yaml"),
        [SAMPLE.encode() + b"\n"],
        out,
        clock=FIXED_NOW.timestamp,
    )

    assert code == 0
    added = (
        ',"processing_timestamp":"2026-11-26T12:00:00.000+00:00","overall_product_quantity":3,'
        '"overall_in_shopping_cart":2,"total_different_products":2}'
    )
    compact = json.dumps(json.loads(SAMPLE), separators=(",", ":"), ensure_ascii=False)
    assert out.getvalue() == (
        "line 1: to usa (de-c2w2lab1-usa-data-stream), partition key 'a1'\n"
        f"  {compact[:-1]}{added}\n"
        "1 record: 1 to usa\n"
    )
