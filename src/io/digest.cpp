// SHA-256 over OpenSSL's EVP interface (requant/io/digest.h).
#include "requant/io/digest.h"

#include <ATen/ATen.h>
#include <openssl/evp.h>

#include <cstdio>
#include <vector>

#include "requant/error.h"

namespace rq::io {

struct Sha256::Impl {
    EVP_MD_CTX* ctx = nullptr;
    ~Impl() { EVP_MD_CTX_free(ctx); }
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
    impl_->ctx = EVP_MD_CTX_new();
    if (!impl_->ctx || EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr) != 1)
        throw InternalError("SHA-256: OpenSSL cannot initialise a digest");
}
Sha256::~Sha256() = default;

Sha256& Sha256::add(const void* data, std::size_t n) {
    if (n > 0 && EVP_DigestUpdate(impl_->ctx, data, n) != 1)
        throw InternalError("SHA-256: update failed");
    return *this;
}

Sha256& Sha256::add(const std::string& s) {
    const uint64_t n = s.size();
    add(&n, sizeof n);
    return add(s.data(), s.size());
}

Sha256& Sha256::add_tensor(const at::Tensor& t) {
    const at::Tensor c = t.cpu().contiguous();
    add(std::string(c10::toString(c.scalar_type())));
    for (const int64_t d : c.sizes()) add(&d, sizeof d);
    return add(c.data_ptr(), std::size_t(c.numel()) * c.element_size());
}

Sha256& Sha256::add_file(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw IoError(path + ": cannot read: " + errno_string());
    std::vector<char> buf(1 << 20);
    std::size_t       n;
    while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) add(buf.data(), n);
    const bool bad = std::ferror(f);
    std::fclose(f);
    if (bad) throw IoError(path + ": read error: " + errno_string());
    return *this;
}

std::string Sha256::hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int  n = 0;
    if (EVP_DigestFinal_ex(impl_->ctx, md, &n) != 1) throw InternalError("SHA-256: final failed");
    static const char* digits = "0123456789abcdef";
    std::string        s;
    for (unsigned i = 0; i < n; ++i) s += {digits[md[i] >> 4], digits[md[i] & 15]};
    return s;
}

std::string sha256_hex(const void* data, std::size_t n) {
    return Sha256().add(data, n).hex();
}

}  // namespace rq::io
