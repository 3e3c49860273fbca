#pragma once
#include <functional>
#include <string>
#include <typeinfo>
#include <vector>

#include <gtest/gtest.h>

#include "requant/error.h"

// Shared helpers of the io tests: where the bundled models and data are, temporary folders,
// hand-made (possibly malformed) files, and expect_error for the rq::Error hierarchy.
// Not a place for test logic: each test file keeps its own cases.

namespace rq::io_test {

// RQ_SHARED_DIR, or a std::runtime_error saying it is missing (tests never skip).
std::string shared_dir();
std::string model_dir(const std::string& name);      // <shared>/models/<name>
std::string data_path(const std::string& name);      // <shared>/data/<name>
std::string tokenizer_dir(const std::string& name);  // <shared>/tokenizers/<name>

// A fresh folder under /tmp (mkdtemp), removed with its contents on destruction.
class TempDir {
  public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&)            = delete;
    TempDir& operator=(const TempDir&) = delete;

    const std::string& path() const { return path_; }
    std::string        file(const std::string& name) const { return path_ + "/" + name; }

  private:
    std::string path_;
};

std::string read_file(const std::string& path);
void        write_file(const std::string& path, const std::string& bytes);
void        truncate_file(const std::string& path, std::size_t size);

// The bytes of a safetensors file: 8-byte little-endian header length, header, data.
std::string safetensors_bytes(const std::string& header_json, const std::string& data);
void        write_raw_safetensors(const std::string& path, const std::string& header_json,
                                  const std::string& data = "");

std::string type_name(const std::type_info& t);  // demangled, for failure messages

// Expects fn() to throw exactly E (or a subclass) whose what() contains every needle.
template <typename E>
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
    try {
        fn();
    } catch (const E& e) {
        const std::string what = e.what();
        for (const auto& n : needles)
            EXPECT_NE(what.find(n), std::string::npos)
                << "message does not contain \"" << n << "\": " << what;
        return;
    } catch (const std::exception& e) {
        ADD_FAILURE() << "expected " << type_name(typeid(E)) << ", got " << type_name(typeid(e))
                      << ": " << e.what();
        return;
    }
    ADD_FAILURE() << "expected " << type_name(typeid(E)) << ", nothing was thrown";
}

}  // namespace rq::io_test
