// Node's cluster protocol: reading worker messages (see node_cluster.hpp).
#include "cluster/node_cluster.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <cmath>

namespace kin::detail {

namespace {

// What JavaScript's String(value) gives for the simple values a key is made of.
std::string js_string(simdjson::dom::element e) {
  std::string_view s;
  if (e.get_string().get(s) == simdjson::SUCCESS) return std::string(s);
  std::int64_t i = 0;
  if (e.get_int64().get(i) == simdjson::SUCCESS) return fmt::format("{}", i);
  double d = 0;
  if (e.get_double().get(d) == simdjson::SUCCESS) {
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e15) {
      return fmt::format("{}", static_cast<std::int64_t>(d));
    }
    return fmt::format("{}", d);
  }
  bool b = false;
  if (e.get_bool().get(b) == simdjson::SUCCESS) return b ? "true" : "false";
  if (e.is_null()) return "null";
  return "[object Object]";
}

std::optional<std::int64_t> integer_of(simdjson::dom::element e) {
  std::int64_t i = 0;
  if (e.get_int64().get(i) == simdjson::SUCCESS) return i;
  double d = 0;
  if (e.get_double().get(d) == simdjson::SUCCESS && std::isfinite(d)) {
    return static_cast<std::int64_t>(d);
  }
  return std::nullopt;
}

}  // namespace

std::optional<node_cluster_message> parse_node_cluster(std::string_view json) {
  thread_local simdjson::dom::parser parser;
  simdjson::padded_string copy(json);
  simdjson::dom::element root;
  if (parser.parse(copy).get(root) != simdjson::SUCCESS) return std::nullopt;
  simdjson::dom::object obj;
  if (root.get_object().get(obj) != simdjson::SUCCESS) return std::nullopt;
  std::string_view cmd;
  if (obj["cmd"].get_string().get(cmd) != simdjson::SUCCESS || cmd != "NODE_CLUSTER") {
    return std::nullopt;
  }
  node_cluster_message m;
  std::string_view text;
  if (obj["act"].get_string().get(text) == simdjson::SUCCESS) m.act = std::string(text);
  simdjson::dom::element e;
  if (obj["seq"].get(e) == simdjson::SUCCESS) m.seq = integer_of(e);
  if (obj["ack"].get(e) == simdjson::SUCCESS) m.ack = integer_of(e);
  bool b = false;
  if (obj["accepted"].get_bool().get(b) == simdjson::SUCCESS) m.accepted = b;
  if (obj["key"].get_string().get(text) == simdjson::SUCCESS) m.key = std::string(text);
  if (m.act != "queryServer" && m.act != "listening") return m;

  if (obj["address"].get_string().get(text) == simdjson::SUCCESS) m.address = std::string(text);
  if (obj["port"].get(e) == simdjson::SUCCESS) m.port = integer_of(e).value_or(0);
  std::string address_type = "undefined";
  if (obj["addressType"].get(e) == simdjson::SUCCESS) {
    address_type = js_string(e);
    if (address_type == "udp4" || address_type == "udp6") {
      m.udp = true;
      m.udp6 = address_type == "udp6";
    } else {
      m.address_type = integer_of(e).value_or(4);
    }
  }
  if (obj["data"].get(e) == simdjson::SUCCESS) m.data = simdjson::minify(e);
  // The key Node's primary makes: `${address}:${port}:${addressType}:${fd}:${index}`.
  auto field = [&](const char* name) {
    simdjson::dom::element v;
    return obj[name].get(v) == simdjson::SUCCESS ? js_string(v) : std::string("undefined");
  };
  m.key = fmt::format("{}:{}:{}:{}:{}", field("address"), field("port"), address_type, field("fd"),
                      field("index"));
  return m;
}

std::string json_quote(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out += '"';
  for (const char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

}  // namespace kin::detail
