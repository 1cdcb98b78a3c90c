// A small, dependency-free SVG renderer for grouped bar charts: the chart `kvault demo`
// writes (TTFT of full recompute vs cached KV, per turn). Plain SVG 1.1 with inline
// attributes only (no CSS, no scripts, no external fonts), so browsers, image viewers and
// rsvg-convert all draw it the same.
#pragma once

#include <string>
#include <vector>

namespace kvault::charts {

struct BarSeries {
  std::string name;   // legend text
  std::string color;  // any SVG colour, e.g. "#d62728"
};

struct BarGroup {
  std::string label;                   // under the group, e.g. "T3"
  std::vector<std::string> sublabels;  // smaller lines under the label, e.g. "2.1k tok", "t2"
  std::vector<double> values;          // one per series; negative or NaN: no bar
  std::string cluster;                 // consecutive groups with the same cluster are drawn
                                       // together under one cluster caption ("" for none)
};

struct BarChart {
  std::string title;
  std::string subtitle;
  std::string y_label;                 // e.g. "time to first token (ms)"
  std::vector<BarSeries> series;
  std::vector<BarGroup> groups;
  std::vector<std::string> notes;      // lines of small print under the chart
  int value_decimals = -1;             // bar value labels: -1 picks per value, else fixed
};

// Renders `chart` as a standalone SVG document. Never fails: an empty chart gives an empty
// frame with its title.
std::string RenderBarChartSvg(const BarChart& chart);

// Escapes &, <, >, " and ' for SVG/XML text and attributes.
std::string XmlEscape(const std::string& text);

}  // namespace kvault::charts
