#include "worker/engine/morph/progress.h"

namespace fm {

std::string_view StageName(Stage s) {
  switch (s) {
    case Stage::kLoad: return "load";
    case Stage::kCalibration: return "calibration";
    case Stage::kSelection: return "selection";
    case Stage::kDiscretization: return "discretization";
    case Stage::kPostTraining: return "post_training";
    case Stage::kEvaluation: return "evaluation";
    case Stage::kExport: return "export";
  }
  return "?";
}

}  // namespace fm
