// Human-readable and JSON renderings of API messages for the CLI: enum names, budgets, times, job summaries, job
// tables, layout tables (selected layers, a row of layer types, scores, margin, near ties) and gate tables.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>

#include "flashmorph/v1/conversion_job.pb.h"
#include "flashmorph/v1/layout.pb.h"

namespace fm::client {

std::string StateName(flashmorph::v1::ConversionJob::State state);  // "RUNNING"
std::string StageName(flashmorph::v1::ConversionJob::Stage stage);  // "GATES"
bool IsTerminal(flashmorph::v1::ConversionJob::State state);
// "4 layers", "ratio 0.25", "8 heads", "unset".
std::string BudgetText(const flashmorph::v1::AttentionBudget& budget);
// "2026-01-02 03:04:05Z" (UTC), "-" when unset.
std::string TimeText(const google::protobuf::Timestamp& t);
// "step/total (pct%)" plus loss, rate and ETA when known.
std::string ProgressText(const flashmorph::v1::Progress& p);

// The proto3 JSON of `message` on one line (lowerCamelCase names; default values omitted).
std::string ToJson(const google::protobuf::Message& message);

// The job as a block of "key: value" lines.
void PrintJob(const flashmorph::v1::ConversionJob& job, std::ostream& out);
// One row per job: NAME STATE STAGE PROGRESS CREATED MODEL.
void PrintJobTable(const std::vector<flashmorph::v1::ConversionJob>& jobs, std::ostream& out);

// "F"ull / "L"inear / "M"ixed per layer, in groups of four.
std::string LayerTypeRow(const flashmorph::v1::Layout& layout);
// Layout `index` of `count`: budget, method, selected layers, type row, per-layer types and scores (near ties
// marked '~'), per-layer heads for HEAD, cut margin and near ties.
void PrintLayout(const flashmorph::v1::Layout& layout, int index, int count, std::ostream& out);
// The final gate values, one row per layer (with the heads' values for HEAD).
void PrintGateTable(const flashmorph::v1::GateVector& gates, std::ostream& out);

}  // namespace fm::client
