#include "charts/svg_chart.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace kvault::charts {
namespace {

// Geometry (pixels).
constexpr double kBarWidth = 20;
constexpr double kBarGap = 2;       // between the bars of one group
constexpr double kGroupGap = 14;    // between groups of one cluster
constexpr double kClusterGap = 34;  // between clusters
constexpr double kLeft = 86, kRight = 30;
constexpr double kPlotTop = 118, kPlotHeight = 360;
constexpr double kMinWidth = 760;
constexpr const char* kFont = "DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif";

std::string Num(double v, int decimals) {
  char buf[64];
  if (decimals < 0) decimals = std::fabs(v) < 10 ? 1 : 0;
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// A "nice" tick step (1, 2, 2.5 or 5 times a power of ten) giving about `ticks` ticks up to `max`.
double NiceStep(double max, int ticks) {
  if (!(max > 0)) return 1;
  double raw = max / ticks;
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * mag >= raw) return m * mag;
  }
  return 10 * mag;
}

std::string TickLabel(double v, double step) {
  int decimals = 0;
  while (decimals < 4 && std::fabs(step * std::pow(10.0, decimals) - std::round(step * std::pow(10.0, decimals))) > 1e-9) {
    ++decimals;
  }
  return Num(v, decimals);
}

bool HasBar(double v) { return std::isfinite(v) && v >= 0; }

}  // namespace

std::string XmlEscape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string RenderBarChartSvg(const BarChart& chart) {
  const size_t nseries = std::max<size_t>(1, chart.series.size());
  const double group_width = nseries * kBarWidth + (nseries - 1) * kBarGap;

  // Horizontal placement of every group, clusters separated by a wider gap.
  std::vector<double> group_x;  // left edge of each group
  double x = kLeft + 16;
  for (size_t i = 0; i < chart.groups.size(); ++i) {
    if (i > 0) x += (chart.groups[i].cluster != chart.groups[i - 1].cluster) ? kClusterGap : kGroupGap;
    group_x.push_back(x);
    x += group_width;
  }
  const double plot_right = std::max(x + 16, kMinWidth - kRight);
  const double width = plot_right + kRight;

  size_t sublines = 0;
  bool any_cluster = false;
  for (const auto& g : chart.groups) {
    sublines = std::max(sublines, g.sublabels.size());
    any_cluster = any_cluster || !g.cluster.empty();
  }
  const double plot_bottom = kPlotTop + kPlotHeight;
  const double labels_bottom = plot_bottom + 18 + 13.0 * sublines + (any_cluster ? 24 : 0);
  const double height = labels_bottom + 18 + 15.0 * chart.notes.size() + 10;

  // Vertical scale.
  double vmax = 0;
  int max_label_chars = 0;
  for (const auto& g : chart.groups) {
    for (double v : g.values) {
      if (!HasBar(v)) continue;
      vmax = std::max(vmax, v);
      max_label_chars = std::max<int>(max_label_chars, Num(v, chart.value_decimals).size());
    }
  }
  const double step = NiceStep(vmax > 0 ? vmax * 1.08 : 1, 6);
  const double axis_max = std::max(step, std::ceil(vmax * 1.08 / step) * step);
  auto y_of = [&](double v) { return plot_bottom - v / axis_max * kPlotHeight; };
  // Value labels turn vertical when they would not fit above a bar.
  const bool vertical_values = max_label_chars * 5.6 > kBarWidth + kBarGap + 2;

  std::ostringstream s;
  s << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << Num(width, 0) << "\" height=\"" << Num(height, 0)
    << "\" viewBox=\"0 0 " << Num(width, 0) << " " << Num(height, 0) << "\" font-family=\"" << kFont << "\">\n";
  s << "<rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";

  // Title, subtitle, legend.
  s << "<text x=\"" << Num(kLeft - 60, 0) << "\" y=\"30\" font-size=\"19\" font-weight=\"bold\" fill=\"#222\">"
    << XmlEscape(chart.title) << "</text>\n";
  if (!chart.subtitle.empty()) {
    s << "<text x=\"" << Num(kLeft - 60, 0) << "\" y=\"52\" font-size=\"12.5\" fill=\"#555\">"
      << XmlEscape(chart.subtitle) << "</text>\n";
  }
  double lx = kLeft - 60;
  for (const auto& ser : chart.series) {
    s << "<rect x=\"" << Num(lx, 0) << "\" y=\"68\" width=\"14\" height=\"14\" fill=\"" << XmlEscape(ser.color)
      << "\"/>\n";
    s << "<text x=\"" << Num(lx + 20, 0) << "\" y=\"80\" font-size=\"13\" fill=\"#222\">" << XmlEscape(ser.name)
      << "</text>\n";
    lx += 20 + 7.2 * ser.name.size() + 28;
  }

  // Grid, y axis and its ticks.
  for (double v = 0; v <= axis_max + step * 1e-6; v += step) {
    double y = y_of(v);
    s << "<line x1=\"" << Num(kLeft, 1) << "\" y1=\"" << Num(y, 1) << "\" x2=\"" << Num(plot_right, 1) << "\" y2=\""
      << Num(y, 1) << "\" stroke=\"" << (v == 0 ? "#444" : "#e3e3e3") << "\" stroke-width=\"1\"/>\n";
    s << "<text x=\"" << Num(kLeft - 7, 1) << "\" y=\"" << Num(y + 4, 1)
      << "\" font-size=\"11\" text-anchor=\"end\" fill=\"#444\">" << TickLabel(v, step) << "</text>\n";
  }
  s << "<line x1=\"" << Num(kLeft, 1) << "\" y1=\"" << Num(kPlotTop, 1) << "\" x2=\"" << Num(kLeft, 1) << "\" y2=\""
    << Num(plot_bottom, 1) << "\" stroke=\"#444\" stroke-width=\"1\"/>\n";
  if (!chart.y_label.empty()) {
    double cy = kPlotTop + kPlotHeight / 2;
    s << "<text x=\"22\" y=\"" << Num(cy, 1) << "\" font-size=\"13\" fill=\"#333\" text-anchor=\"middle\" "
      << "transform=\"rotate(-90 22 " << Num(cy, 1) << ")\">" << XmlEscape(chart.y_label) << "</text>\n";
  }

  // Bars, value labels and group labels.
  for (size_t i = 0; i < chart.groups.size(); ++i) {
    const BarGroup& g = chart.groups[i];
    for (size_t k = 0; k < g.values.size() && k < nseries; ++k) {
      double v = g.values[k];
      if (!HasBar(v)) continue;
      double bx = group_x[i] + k * (kBarWidth + kBarGap);
      double top = y_of(v);
      double h = std::max(plot_bottom - top, v > 0 ? 1.0 : 0.0);
      const std::string color = k < chart.series.size() ? chart.series[k].color : "#888";
      s << "<rect x=\"" << Num(bx, 1) << "\" y=\"" << Num(plot_bottom - h, 1) << "\" width=\"" << Num(kBarWidth, 1)
        << "\" height=\"" << Num(h, 1) << "\" fill=\"" << XmlEscape(color) << "\"><title>"
        << XmlEscape((k < chart.series.size() ? chart.series[k].name : "") + ": " + Num(v, chart.value_decimals))
        << "</title></rect>\n";
      double cx = bx + kBarWidth / 2;
      if (vertical_values) {
        double ly = plot_bottom - h - 4;
        s << "<text x=\"" << Num(cx + 3.5, 1) << "\" y=\"" << Num(ly, 1) << "\" font-size=\"10\" fill=\"#333\" "
          << "transform=\"rotate(-90 " << Num(cx + 3.5, 1) << " " << Num(ly, 1) << ")\">"
          << Num(v, chart.value_decimals) << "</text>\n";
      } else {
        s << "<text x=\"" << Num(cx, 1) << "\" y=\"" << Num(plot_bottom - h - 4, 1)
          << "\" font-size=\"10\" fill=\"#333\" text-anchor=\"middle\">" << Num(v, chart.value_decimals)
          << "</text>\n";
      }
    }
    double gx = group_x[i] + group_width / 2;
    s << "<text x=\"" << Num(gx, 1) << "\" y=\"" << Num(plot_bottom + 16, 1)
      << "\" font-size=\"12\" text-anchor=\"middle\" fill=\"#222\">" << XmlEscape(g.label) << "</text>\n";
    for (size_t j = 0; j < g.sublabels.size(); ++j) {
      s << "<text x=\"" << Num(gx, 1) << "\" y=\"" << Num(plot_bottom + 30 + 13.0 * j, 1)
        << "\" font-size=\"10\" text-anchor=\"middle\" fill=\"#666\">" << XmlEscape(g.sublabels[j]) << "</text>\n";
    }
  }

  // Cluster captions with a bracket line.
  if (any_cluster) {
    double cy = plot_bottom + 18 + 13.0 * sublines + 8;
    size_t i = 0;
    while (i < chart.groups.size()) {
      size_t j = i;
      while (j + 1 < chart.groups.size() && chart.groups[j + 1].cluster == chart.groups[i].cluster) ++j;
      if (!chart.groups[i].cluster.empty()) {
        double x0 = group_x[i], x1 = group_x[j] + group_width;
        s << "<line x1=\"" << Num(x0, 1) << "\" y1=\"" << Num(cy, 1) << "\" x2=\"" << Num(x1, 1) << "\" y2=\""
          << Num(cy, 1) << "\" stroke=\"#999\" stroke-width=\"1\"/>\n";
        s << "<text x=\"" << Num((x0 + x1) / 2, 1) << "\" y=\"" << Num(cy + 15, 1)
          << "\" font-size=\"12.5\" font-weight=\"bold\" text-anchor=\"middle\" fill=\"#333\">"
          << XmlEscape(chart.groups[i].cluster) << "</text>\n";
      }
      i = j + 1;
    }
  }

  // Notes.
  double ny = labels_bottom + 18;
  for (const auto& note : chart.notes) {
    s << "<text x=\"" << Num(kLeft - 60, 0) << "\" y=\"" << Num(ny, 1) << "\" font-size=\"11\" fill=\"#555\">"
      << XmlEscape(note) << "</text>\n";
    ny += 15;
  }
  s << "</svg>\n";
  return s.str();
}

}  // namespace kvault::charts
