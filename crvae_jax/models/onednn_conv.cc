// oneDNN convolutions for XLA's CPU backend, as XLA FFI custom calls (conv_impl='onednn').
//
// Three handlers over NHWC activations and HWIO kernels, float32, square kernels,
// the same stride and padding on both spatial axes:
//   crvae_onednn_conv_fwd(x [N,H,W,I], w [K,K,I,O]) -> y [N,OH,OW,O]
//   crvae_onednn_conv_bwd_data(dy [N,OH,OW,O], w [K,K,I,O]) -> dx [N,H,W,I]
//   crvae_onednn_conv_bwd_weights(x [N,H,W,I], dy [N,OH,OW,O]) -> dw [K,K,I,O]
// Attributes: stride, pad_l, pad_r (pad_r may differ from pad_l so that
// OH = (H + pad_l + pad_r - K) / stride + 1 holds exactly, as oneDNN requires).
// A transposed convolution is the bwd_data of the conv it is the adjoint of
// (crvae_jax/models/onednn_conv.py).
//
// oneDNN picks its own (blocked) kernel layout: the HWIO kernel is reordered on every
// call (it is small next to the activations). Primitives are created once per shape and
// kept in a cache. XLA may run these calls on several threads at once (one per device
// of a data-parallel step), so each primitive uses a user-provided scratchpad, one per
// calling thread: oneDNN's default library scratchpad is shared by all primitives and
// is not safe under concurrent execution (two devices then deadlock in the
// backward-weights kernel's reduction).

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

#if DNNL_VERSION_MAJOR < 3
#error "conv_impl=onednn needs oneDNN 3 or later (pip install -r requirements.txt)"
#endif

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// oneDNN's logical dims (always N, C, H, W order; weights O, I, KH, KW) of one conv.
struct Shapes {
  memory::dims src, wei, dst, strides, pad_l, pad_r;
};

std::string Key(const char* kind, const Shapes& s) {
  std::string key(kind);
  for (const auto* d : {&s.src, &s.wei, &s.dst, &s.strides, &s.pad_l, &s.pad_r})
    for (auto v : *d) key += "," + std::to_string(v);
  return key;
}

const dnnl::primitive_attr& Attr() {
  static const dnnl::primitive_attr attr = [] {
    dnnl::primitive_attr a;
    a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return a;
  }();
  return attr;
}

// This thread's scratchpad (64-byte aligned, as oneDNN's own allocations are), grown to
// `pd`'s need. A call's reorders and its convolution share it one after the other: CPU
// streams execute synchronously.
struct AlignedBuffer {
  void* data = nullptr;
  size_t size = 0;
  ~AlignedBuffer() { std::free(data); }
};

memory Scratchpad(const dnnl::primitive_desc_base& pd) {
  thread_local AlignedBuffer buffer;
  memory::desc md = pd.scratchpad_desc();
  if (buffer.size < md.get_size()) {
    size_t size = (md.get_size() + 63) / 64 * 64;
    std::free(buffer.data);
    buffer.data = std::aligned_alloc(64, size);
    buffer.size = buffer.data ? size : 0;
    if (!buffer.data) throw std::bad_alloc();
  }
  return memory(md, Engine(), buffer.data);
}

dnnl::convolution_forward::primitive_desc ForwardPd(const Shapes& s, dnnl::prop_kind prop) {
  memory::desc src(s.src, dt::f32, tag::nhwc), wei(s.wei, dt::f32, tag::any),
      dst(s.dst, dt::f32, tag::nhwc);
  return dnnl::convolution_forward::primitive_desc(
      Engine(), prop, dnnl::algorithm::convolution_direct, src, wei, dst, s.strides,
      s.pad_l, s.pad_r, Attr());
}

struct FwdPrim {
  dnnl::convolution_forward::primitive_desc pd;
  dnnl::convolution_forward prim;
};
struct BwdDataPrim {
  dnnl::convolution_backward_data::primitive_desc pd;
  dnnl::convolution_backward_data prim;
};
struct BwdWeightsPrim {
  dnnl::convolution_backward_weights::primitive_desc pd;
  dnnl::convolution_backward_weights prim;
};

template <typename P>
P& Cached(const std::string& key, P (*make)(const Shapes&), const Shapes& s) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::unique_ptr<P>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, std::make_unique<P>(make(s))).first;
  return *it->second;
}

FwdPrim MakeFwd(const Shapes& s) {
  auto pd = ForwardPd(s, dnnl::prop_kind::forward_training);
  return {pd, dnnl::convolution_forward(pd)};
}

BwdDataPrim MakeBwdData(const Shapes& s) {
  memory::desc dsrc(s.src, dt::f32, tag::nhwc), wei(s.wei, dt::f32, tag::any),
      ddst(s.dst, dt::f32, tag::nhwc);
  dnnl::convolution_backward_data::primitive_desc pd(
      Engine(), dnnl::algorithm::convolution_direct, dsrc, wei, ddst, s.strides, s.pad_l,
      s.pad_r, ForwardPd(s, dnnl::prop_kind::forward_training), Attr());
  return {pd, dnnl::convolution_backward_data(pd)};
}

BwdWeightsPrim MakeBwdWeights(const Shapes& s) {
  memory::desc src(s.src, dt::f32, tag::nhwc), dwei(s.wei, dt::f32, tag::any),
      ddst(s.dst, dt::f32, tag::nhwc);
  dnnl::convolution_backward_weights::primitive_desc pd(
      Engine(), dnnl::algorithm::convolution_direct, src, dwei, ddst, s.strides, s.pad_l,
      s.pad_r, ForwardPd(s, dnnl::prop_kind::forward_training), Attr());
  return {pd, dnnl::convolution_backward_weights(pd)};
}

// Copies `from` into `to` (layouts differ) with this thread's scratchpad.
void Reorder(memory& from, memory& to, dnnl::stream& strm) {
  dnnl::reorder::primitive_desc pd(from, to, Attr());
  dnnl::reorder(pd).execute(strm, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                                   {DNNL_ARG_SCRATCHPAD, Scratchpad(pd)}});
}

// The user's HWIO kernel as a oneDNN memory, reordered to `want` if that differs.
memory KernelIn(const Shapes& s, float* data, const memory::desc& want,
                dnnl::stream& strm) {
  memory user({s.wei, dt::f32, tag::hwio}, Engine(), data);
  if (want == user.get_desc()) return user;
  memory m(want, Engine());
  Reorder(user, m, strm);
  return m;
}

// Runs `body`, turning any C++ exception into an XLA error (one escaping an FFI
// handler would abort the process).
template <typename F>
ffi::Error Guarded(const char* what, F body) {
  try {
    body();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string("oneDNN ") + what + ": " + e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(what) + ": " + e.what());
  } catch (...) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(what) + ": unknown error");
  }
  return ffi::Error::Success();
}

// The conv's Shapes from the dimensions of its activations x [N, H, W, C], kernel
// [K, K, C, Cout] and output y [N, OH, OW, Cout] (whichever buffers hold them), or an
// error if they are not rank 4 or do not fit together (square kernel and images).
template <typename D>
ffi::Error ShapesOf(const D& xd, const D& wd, const D& yd, int64_t stride, int64_t pad_l,
                    int64_t pad_r, Shapes* s) {
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn conv: rank-4 arrays only");
  if (xd[3] != wd[2] || yd[3] != wd[3] || xd[0] != yd[0] || wd[0] != wd[1] ||
      xd[1] != xd[2] || yd[1] != yd[2])
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "onednn conv: input, kernel and output shapes do not fit together");
  *s = Shapes{{xd[0], xd[3], xd[1], xd[2]}, {wd[3], wd[2], wd[0], wd[1]},
              {xd[0], wd[3], yd[1], yd[2]}, {stride, stride}, {pad_l, pad_l},
              {pad_r, pad_r}};
  return ffi::Error::Success();
}

// Forward and backward-data run over batches of at most kMaxBatch images, one
// primitive call each (a sub-batch is a contiguous slice of the NHWC buffers): inside the
// IS evaluation's graph a single call over 2048 images ran slower than the same images
// in slices (benchmarks/RESULTS.md, "Large batches under onednn").
constexpr int64_t kMaxBatch = 256;

// Elements per image of a oneDNN N, C, H, W dims vector.
int64_t PerImage(const memory::dims& d) { return d[1] * d[2] * d[3]; }

// Runs the primitive of `kind` (made by `make`) over the batch in slices of at most
// kMaxBatch images: exec(primitive, kernel, first_image) executes one slice, the user's
// HWIO kernel `w` reordered to that primitive's layout (again only if a last, smaller
// slice's primitive wants another one).
template <typename P, typename Exec>
void OverBatchSlices(const Shapes& s, const char* kind, P (*make)(const Shapes&), float* w,
                     dnnl::stream& strm, Exec exec) {
  memory wei;
  const int64_t n = s.src[0];
  for (int64_t i = 0; i < n; i += kMaxBatch) {
    Shapes sub = s;
    sub.src[0] = sub.dst[0] = std::min(kMaxBatch, n - i);
    auto& p = Cached<P>(Key(kind, sub), make, sub);
    if (!wei || wei.get_desc() != p.pd.weights_desc())
      wei = KernelIn(s, w, p.pd.weights_desc(), strm);
    exec(p, wei, i);
  }
}

ffi::Error ConvFwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t pad_l,
                       int64_t pad_r) {
  Shapes s;
  if (auto err = ShapesOf(x.dimensions(), w.dimensions(), y->dimensions(), stride, pad_l,
                          pad_r, &s); err.failure())
    return err;
  return Guarded("conv forward", [&] {
    dnnl::stream strm(Engine());
    OverBatchSlices(s, "fwd", MakeFwd, w.typed_data(), strm,
                    [&](FwdPrim& p, memory& wei, int64_t first) {
      memory src(p.pd.src_desc(), Engine(), x.typed_data() + first * PerImage(s.src));
      memory dst(p.pd.dst_desc(), Engine(), y->typed_data() + first * PerImage(s.dst));
      p.prim.execute(strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei},
                            {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, Scratchpad(p.pd)}});
    });
    strm.wait();
  });
}

ffi::Error ConvBwdDataImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                           ffi::ResultBuffer<ffi::F32> dx, int64_t stride, int64_t pad_l,
                           int64_t pad_r) {
  Shapes s;
  if (auto err = ShapesOf(dx->dimensions(), w.dimensions(), dy.dimensions(), stride,
                          pad_l, pad_r, &s); err.failure())
    return err;
  return Guarded("conv backward data", [&] {
    dnnl::stream strm(Engine());
    OverBatchSlices(s, "bwd_data", MakeBwdData, w.typed_data(), strm,
                    [&](BwdDataPrim& p, memory& wei, int64_t first) {
      memory ddst(p.pd.diff_dst_desc(), Engine(),
                  dy.typed_data() + first * PerImage(s.dst));
      memory dsrc(p.pd.diff_src_desc(), Engine(),
                  dx->typed_data() + first * PerImage(s.src));
      p.prim.execute(strm, {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_WEIGHTS, wei},
                            {DNNL_ARG_DIFF_SRC, dsrc},
                            {DNNL_ARG_SCRATCHPAD, Scratchpad(p.pd)}});
    });
    strm.wait();
  });
}

ffi::Error ConvBwdWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                              ffi::ResultBuffer<ffi::F32> dw, int64_t stride,
                              int64_t pad_l, int64_t pad_r) {
  Shapes s;
  if (auto err = ShapesOf(x.dimensions(), dw->dimensions(), dy.dimensions(), stride,
                          pad_l, pad_r, &s); err.failure())
    return err;
  return Guarded("conv backward weights", [&] {
    auto& p = Cached<BwdWeightsPrim>(Key("bwd_weights", s), MakeBwdWeights, s);
    dnnl::stream strm(Engine());
    memory src(p.pd.src_desc(), Engine(), x.typed_data());
    memory ddst(p.pd.diff_dst_desc(), Engine(), dy.typed_data());
    memory user({s.wei, dt::f32, tag::hwio}, Engine(), dw->typed_data());
    bool direct = p.pd.diff_weights_desc() == user.get_desc();
    memory dwei = direct ? user : memory(p.pd.diff_weights_desc(), Engine());
    p.prim.execute(strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, ddst},
                          {DNNL_ARG_DIFF_WEIGHTS, dwei},
                          {DNNL_ARG_SCRATCHPAD, Scratchpad(p.pd)}});
    if (!direct) Reorder(dwei, user, strm);
    strm.wait();
  });
}

}  // namespace

#define CONV_BINDING()                                       \
  ffi::Ffi::Bind()                                           \
      .Arg<ffi::Buffer<ffi::F32>>()                          \
      .Arg<ffi::Buffer<ffi::F32>>()                          \
      .Ret<ffi::Buffer<ffi::F32>>()                          \
      .Attr<int64_t>("stride")                               \
      .Attr<int64_t>("pad_l")                                \
      .Attr<int64_t>("pad_r")

XLA_FFI_DEFINE_HANDLER_SYMBOL(CrvaeOnednnConvFwd, ConvFwdImpl, CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CrvaeOnednnConvBwdData, ConvBwdDataImpl, CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(CrvaeOnednnConvBwdWeights, ConvBwdWeightsImpl,
                              CONV_BINDING());
