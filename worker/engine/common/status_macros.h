// Status helpers shared by the engine. Errors are absl::Status values whose codes are the canonical gRPC codes,
// so the service maps them to RPC statuses one to one. The engine never throws across its public interfaces.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FM_CONCAT_INNER_(a, b) a##b
#define FM_CONCAT_(a, b) FM_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define FM_RETURN_IF_ERROR(expr)                  \
  do {                                            \
    ::absl::Status fm_status_ = (expr);           \
    if (!fm_status_.ok()) return fm_status_;      \
  } while (0)

// `FM_ASSIGN_OR_RETURN(auto x, MakeX());` assigns the value of an absl::StatusOr or returns its error.
#define FM_ASSIGN_OR_RETURN(lhs, expr) FM_ASSIGN_OR_RETURN_IMPL_(FM_CONCAT_(fm_statusor_, __LINE__), lhs, expr)
#define FM_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return std::move(tmp).status();  \
  lhs = std::move(tmp).value()
