// The cluster master as the primary of Node.js workers: Node's cluster protocol (node v20,
// lib/internal/cluster/primary.js and child.js) over Node's IPC channel.
//
// A worker says `online`, asks for each server it listens on with `queryServer` (the primary
// answers with the listening socket in shared mode, or with its address in round-robin mode,
// and then sends it connections as `newconn` with the handle, each answered by
// `{ack, accepted}`), says `listening` (the worker is ready), and `close` when a server
// closes. The primary's `disconnect` asks it to close its servers, finish its connections and
// close the channel.
#include "cluster/master_state.hpp"

#include <fmt/format.h>

#include <cerrno>

namespace kin::detail {

namespace {

bool is_wildcard(const socket_address& a) {
  const std::string host = a.host();
  return host == "0.0.0.0" || host == "::";
}

// The address a Node query binds: Node's primary listens on `::` (taking IPv4 too) when the
// worker gave no host, and on 0.0.0.0 when IPv6 is not there.
std::vector<socket_address> query_addresses(const node_cluster_message& m) {
  std::vector<socket_address> out;
  if (m.port < 0) {
    if (m.address) {
      if (auto a = socket_address::unix_path(*m.address)) out.push_back(*a);
    }
    return out;
  }
  const auto port = static_cast<std::uint16_t>(m.port);
  if (!m.address) {
    for (const char* host : {"::", "0.0.0.0"}) {
      if (auto a = socket_address::ip(host, port)) out.push_back(*a);
    }
    return out;
  }
  if (auto a = socket_address::ip(*m.address, port)) out.push_back(*a);
  return out;
}

}  // namespace

void cluster_master_impl::node_reply(worker_rec& w, std::int64_t ack, std::string_view fields,
                                     int fd) {
  if (!w.chan || !w.chan->is_open()) return;
  std::string line = fmt::format(R"({{"cmd":"NODE_CLUSTER",{}{}"ack":{},"seq":{}}})", fields,
                                 fields.empty() ? "" : ",", ack, w.node_seq++);
  if (fd < 0) {
    w.chan->send(line);
  } else {
    const int fds[] = {fd};
    w.chan->send_keeping(line, fds);
  }
}

void cluster_master_impl::node_message(int id, std::string_view message) {
  worker_rec* w = find(id);
  if (w == nullptr) return;
  auto parsed = parse_node_cluster(message);
  if (!parsed) return;
  const node_cluster_message& m = *parsed;
  if (m.act.empty()) {
    // The reply to a newconn: accepted, or handed back (the worker is closing that server).
    if (!m.ack) return;
    const auto seq = static_cast<std::uint64_t>(*m.ack);
    auto it = w->in_flight.find(seq);
    if (it == w->in_flight.end()) return;
    if (m.accepted) {
      w->in_flight.erase(it);
      ++handed_total;
    } else {
      give_back(*w, seq);
    }
    dispatch();
    check_closed();
    return;
  }
  if (m.act == "online") {
    emit(cluster_event::kind::worker_started, id,
         fmt::format("worker {} (pid {}) is online", id, w->pid));
  } else if (m.act == "queryServer") {
    // As Node's primary: a worker on its way out gets no new server.
    if (w->exited_after_disconnect || w->told_stop || !m.seq) return;
    node_query(*w, m);
  } else if (m.act == "listening") {
    became_ready(*w);
  } else if (m.act == "close") {
    std::erase_if(w->node_listeners, [&](const auto& entry) { return entry.second == m.key; });
  } else if (m.act == "exitedAfterDisconnect") {
    w->exited_after_disconnect = true;
    if (m.seq) node_reply(*w, *m.seq, {});
  }
}

// A datagram socket is shared in both modes, as Node's primary shares it (there is nothing
// to balance): bound once per key and sent to every worker that asks.
void cluster_master_impl::node_udp_query(worker_rec& w, const node_cluster_message& m) {
  const std::int64_t ack = *m.seq;
  auto it = node_udp.find(m.key);
  if (it == node_udp.end()) {
    const char* any = m.udp6 ? "::" : "0.0.0.0";
    auto address = socket_address::ip(m.address ? std::string_view(*m.address) : any,
                                      static_cast<std::uint16_t>(m.port));
    std::error_code ec = address ? std::error_code() : address.error();
    auto s = std::make_unique<udp_socket>(loop_);
    if (!ec) {
      if (auto bound = s->bind(*address); !bound) ec = bound.error();
    }
    if (ec) {
      emit(cluster_event::kind::error, w.id,
           fmt::format("worker {} asked for {}: {}", w.id, m.key, ec.message()));
      node_reply(w, ack,
                 fmt::format(R"("errno":{},"key":{},"data":null)", -ec.value(), json_quote(m.key)));
      return;
    }
    it = node_udp.emplace(m.key, std::move(s)).first;
  }
  node_reply(w, ack, fmt::format(R"("errno":0,"key":{},"data":{})", json_quote(m.key), m.data),
             it->second->fd());
}

void cluster_master_impl::node_query(worker_rec& w, const node_cluster_message& m) {
  const std::int64_t ack = *m.seq;
  if (m.udp) {
    node_udp_query(w, m);
    return;
  }
  // The listener: one bound for this key before, a configured one on the same port (and
  // address, or a wildcard), or a new one.
  std::optional<std::size_t> found;
  for (std::size_t i = 0; i < listeners.size() && !found; ++i) {
    if (listeners[i].node_key == m.key) found = i;
  }
  for (std::size_t i = 0; i < listeners.size() && !found; ++i) {
    const socket_address& a = listeners[i].address;
    if (m.port < 0) {
      if (a.family() == address_family::unix_path && m.address && a.path() == *m.address) found = i;
    } else if (a.is_ip() && m.port != 0 && a.port() == m.port) {
      if (!m.address || is_wildcard(a) || a.host() == *m.address) found = i;
    }
  }
  if (!found) {
    std::error_code last = errno_code(EINVAL);
    for (const socket_address& a : query_addresses(m)) {
      auto s = open_listener(loop_, a);
      if (!s) {
        last = s.error();
        continue;
      }
      const std::size_t index = add_listener(std::move(*s), a.to_string(), m.key);
      if (auto r = listen_on(index); !r) {
        last = r.error();
        listeners[index].srv->close();
        listeners.pop_back();
        continue;
      }
      listeners[index].node_data = m.data;
      found = index;
      break;
    }
    if (!found) {
      emit(cluster_event::kind::error, w.id,
           fmt::format("worker {} asked for {}: {}", w.id, m.key, last.message()));
      node_reply(
          w, ack,
          fmt::format(R"("errno":{},"key":{},"data":null)", -last.value(), json_quote(m.key)));
      return;
    }
  }
  listener_rec& l = listeners[*found];
  if (l.node_key.empty()) l.node_key = m.key;
  if (o.mode == cluster_mode::shared) {
    node_reply(w, ack,
               fmt::format(R"("errno":0,"key":{},"data":{})", json_quote(m.key), l.node_data),
               l.srv->fd());
    return;
  }
  std::string sockname;
  if (l.address.is_ip()) {
    sockname = fmt::format(
        R"(,"sockname":{{"address":{},"family":"{}","port":{}}})", json_quote(l.address.host()),
        l.address.family() == address_family::ipv4 ? "IPv4" : "IPv6", l.address.port());
  }
  node_reply(w, ack,
             fmt::format(R"("errno":null,"key":{},"data":{}{})", json_quote(m.key), l.node_data,
                         sockname));
  w.node_listeners[*found] = m.key;
  dispatch();
}

}  // namespace kin::detail
