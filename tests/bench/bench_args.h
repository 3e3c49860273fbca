#pragma once
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

// The "--key value" options of the benchmark programs: every key must be one the program
// knows (a typo is an error, not a silent default); values are read with a default.

namespace rq::bench {

class Args {
  public:
    Args(int argc, char** argv, const std::vector<std::string>& known, const std::string& usage) {
        for (int i = 1; i < argc; i += 2) {
            const std::string k  = argv[i];
            bool              ok = false;
            for (const auto& n : known) ok = ok || k == "--" + n;
            if (!ok || i + 1 >= argc) throw std::runtime_error("bad option " + k + "; " + usage);
            v_[k.substr(2)] = argv[i + 1];
        }
    }
    std::string str(const std::string& k, const std::string& def = "") const {
        const auto it = v_.find(k);
        return it == v_.end() ? def : it->second;
    }
    int64_t integer(const std::string& k, int64_t def) const {
        return v_.count(k) ? std::stoll(v_.at(k)) : def;
    }
    double real(const std::string& k, double def) const {
        return v_.count(k) ? std::stod(v_.at(k)) : def;
    }

  private:
    std::map<std::string, std::string> v_;
};

}  // namespace rq::bench
