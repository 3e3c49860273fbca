// Helpers shared by the io tests (io_fixtures.h).
#include "io_fixtures.h"

#include <cxxabi.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>

namespace rq::io_test {

std::string shared_dir() {
    const std::string d = RQ_SHARED_DIR;
    struct stat       st {};
    if (::stat(d.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
        throw std::runtime_error(
            "RQ_SHARED_DIR '" + d +
            "' does not exist: the io tests need the bundled models and data "
            "(../shared beside the checkout, or configure -DRQ_SHARED_DIR=...)");
    return d;
}

std::string model_dir(const std::string& name) {
    return shared_dir() + "/models/" + name;
}
std::string data_path(const std::string& name) {
    return shared_dir() + "/data/" + name;
}

std::string tokenizer_dir(const std::string& name) {
    return shared_dir() + "/tokenizers/" + name;
}

TempDir::TempDir() {
    char tmpl[] = "/tmp/rq-io-test-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
}

TempDir::~TempDir() {
    std::error_code ec;  // never throw from a destructor
    std::filesystem::remove_all(path_, ec);
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_file(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error(path + ": cannot write");
}

void truncate_file(const std::string& path, std::size_t size) {
    std::filesystem::resize_file(path, size);
}

std::string safetensors_bytes(const std::string& header_json, const std::string& data) {
    std::string         out;
    const std::uint64_t n = header_json.size();
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
    return out + header_json + data;
}

void write_raw_safetensors(const std::string& path, const std::string& header_json,
                           const std::string& data) {
    write_file(path, safetensors_bytes(header_json, data));
}

std::string type_name(const std::type_info& t) {
    int                                    status = 0;
    std::unique_ptr<char, void (*)(void*)> p(
        abi::__cxa_demangle(t.name(), nullptr, nullptr, &status), std::free);
    return status == 0 && p ? std::string(p.get()) : std::string(t.name());
}

}  // namespace rq::io_test
