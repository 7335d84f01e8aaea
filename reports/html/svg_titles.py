"""Hover text for the points of a chart: an SVG <title> inside each marker matplotlib drew, so the browser
shows the value, the step and the name under the pointer without any script (the technique of matplotlib's
own SVG tooltip example: give the artist a gid, find its group in the SVG, add the titles there).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence

SVG = "http://www.w3.org/2000/svg"
# Namespaces matplotlib writes; registered so that the SVG keeps its prefixes instead of ns0, ns1...
NAMESPACES = {"": SVG, "xlink": "http://www.w3.org/1999/xlink", "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
              "cc": "http://creativecommons.org/ns#", "dc": "http://purl.org/dc/elements/1.1/"}


def add_titles(svg: str, titles: Mapping[str, Sequence[str]]) -> str:
    """Give the k-th marker of the artist with gid `key` the text `titles[key][k]`. An artist whose markers
    do not match its titles one to one (a point clipped away) gets none rather than wrong ones."""
    if not titles:
        return svg
    for prefix, uri in NAMESPACES.items():
        ET.register_namespace(prefix, uri)
    root = ET.fromstring(svg)
    for group in root.iter(f"{{{SVG}}}g"):
        texts = titles.get(group.get("id") or "")
        if texts is None:
            continue
        markers = list(group.iter(f"{{{SVG}}}use"))
        if len(markers) != len(texts):
            continue
        for marker, text in zip(markers, texts):
            ET.SubElement(marker, f"{{{SVG}}}title").text = text  # ElementTree escapes <, > and &
    return ET.tostring(root, encoding="unicode")
