"""Accessibility checks for the page tests: axe-core (from the npm registry, installed
under tests/js by ``make deps``) injected into the page and run against WCAG 2.1 A and AA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import Page

AXE = Path(__file__).resolve().parent.parent / "js" / "node_modules" / "axe-core" / "axe.min.js"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
FAILING_IMPACTS = {"serious", "critical"}


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Every WCAG 2.1 A/AA violation axe finds on the page as it is now, of any impact."""
    if not AXE.exists():
        raise AssertionError(f"axe-core is not installed at {AXE}: run `make deps` (npm ci in tests/js)")
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = await page.evaluate(
        """async (tags) => {
            const r = await axe.run(document, {runOnly: {type: "tag", values: tags}, resultTypes: ["violations"]});
            return {violations: r.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(n => ({target: n.target.join(" "), summary: n.failureSummary})),
            }))};
        }""",
        WCAG_21_AA,
    )
    return result["violations"]


def describe(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        lines.append(f"{v['impact']}: {v['id']} ({v['help']})")
        for node in v["nodes"][:6]:
            lines.append(f"    {node['target']}: {node['summary'].splitlines()[-1].strip() if node['summary'] else ''}")
    return "\n".join(lines)


async def assert_accessible(page: Page, screen: str) -> None:
    """No serious or critical WCAG 2.1 A/AA violation on this screen."""
    failing = [v for v in await axe_violations(page) if v["impact"] in FAILING_IMPACTS]
    assert not failing, f"axe-core on the {screen} screen:\n{describe(failing)}"
