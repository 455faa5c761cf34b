// Every public kin header (fmt formatters excepted: include <kin/fmt.hpp> for those).
#pragma once

#include <kin/address.hpp>
#include <kin/channel.hpp>
#include <kin/cluster.hpp>
#include <kin/fd.hpp>
#include <kin/fd_kind.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/process.hpp>
#include <kin/result.hpp>
#include <kin/signal.hpp>
#include <kin/stream.hpp>
#include <kin/this_process.hpp>
#include <kin/version.hpp>
