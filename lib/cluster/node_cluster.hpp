// Node's cluster protocol as the primary speaks it (node v20, lib/internal/cluster): the
// messages a worker sends, read from their JSON, and the JSON of the ones the primary sends.
// Every message is {"cmd":"NODE_CLUSTER", ..., "seq":N}; a reply carries "ack":<seq it answers>.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kin::detail {

struct node_cluster_message {
  std::string act;  ///< empty for a reply
  std::optional<std::int64_t> seq;
  std::optional<std::int64_t> ack;
  bool accepted = false;  ///< the reply to newconn
  // queryServer, listening, close:
  std::optional<std::string> address;  ///< nullopt: null or absent
  std::int64_t port = 0;
  std::int64_t address_type = 4;  ///< 4, 6, or -1 (a Unix path)
  bool udp = false;               ///< addressType "udp4" or "udp6"
  bool udp6 = false;              ///< addressType "udp6"
  std::string key;  ///< close: the key; queryServer: the key the primary gives it, as Node does
  std::string data = "null";  ///< queryServer: the custom server data, as JSON text
};

/// Reads a NODE_CLUSTER message; nullopt for anything else (or JSON that does not parse).
std::optional<node_cluster_message> parse_node_cluster(std::string_view json);

/// `text` as a JSON string literal.
std::string json_quote(std::string_view text);

}  // namespace kin::detail
