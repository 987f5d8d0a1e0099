// One-pass Haar DWT and inverse DWT on the CPU.
//
// Each 2x2 input block is read once and its four band coefficients are
// written once; the pure-PyTorch formulation in wavelet.py needs several
// element-wise passes for the same result. Contiguous NCHW input gives NCHW
// output, channels-last input gives channels-last output. Bands are
// concatenated on channels, band-major (LL, LH, HL, HH), orthonormal (1/2
// per 2x2 block). Odd sizes read zeros beyond the bottom/right border; the
// inverse can crop its output to any size within the last block, which is
// what the DWT's backward pass needs.
#include <torch/extension.h>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <string>
#include <vector>

namespace {

using at::Tensor;

bool is_channels_last(const Tensor& x) {
  return !x.is_contiguous() &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

void check_input(const Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, name, " expects a (B, C, H, W) tensor, got ",
              x.dim(), " dimensions");
  TORCH_CHECK(x.device().is_cpu(), name, " (compiled) runs on the CPU only");
}

// n blocks [[a, b], [c, d]], the k-th at a[stride * k] etc. -> LL, LH (high
// along H), HL (high along W), HH at index k. The matrix is symmetric and
// orthogonal, so the same arithmetic inverts it.
template <typename scalar_t, int64_t stride>
void haar_span(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
               const scalar_t* __restrict__ c, const scalar_t* __restrict__ d,
               scalar_t* __restrict__ ll, scalar_t* __restrict__ lh,
               scalar_t* __restrict__ hl, scalar_t* __restrict__ hh,
               int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t k = 0; k < n; ++k) {
    const acc_t s0 = acc_t(a[stride * k]) + acc_t(b[stride * k]);
    const acc_t s1 = acc_t(c[stride * k]) + acc_t(d[stride * k]);
    const acc_t d0 = acc_t(a[stride * k]) - acc_t(b[stride * k]);
    const acc_t d1 = acc_t(c[stride * k]) - acc_t(d[stride * k]);
    ll[k] = acc_t(0.5) * (s0 + s1);
    lh[k] = acc_t(0.5) * (s0 - s1);
    hl[k] = acc_t(0.5) * (d0 + d1);
    hh[k] = acc_t(0.5) * (d0 - d1);
  }
}

// The inverse: coefficients at index k -> block values at out[stride * k].
template <typename scalar_t, int64_t stride>
void inverse_span(const scalar_t* __restrict__ ll,
                  const scalar_t* __restrict__ lh,
                  const scalar_t* __restrict__ hl,
                  const scalar_t* __restrict__ hh, scalar_t* __restrict__ a,
                  scalar_t* __restrict__ b, scalar_t* __restrict__ c,
                  scalar_t* __restrict__ d, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t k = 0; k < n; ++k) {
    const acc_t s0 = acc_t(ll[k]) + acc_t(lh[k]);
    const acc_t s1 = acc_t(hl[k]) + acc_t(hh[k]);
    const acc_t d0 = acc_t(ll[k]) - acc_t(lh[k]);
    const acc_t d1 = acc_t(hl[k]) - acc_t(hh[k]);
    a[stride * k] = acc_t(0.5) * (s0 + s1);
    b[stride * k] = acc_t(0.5) * (s0 - s1);
    c[stride * k] = acc_t(0.5) * (d0 + d1);
    d[stride * k] = acc_t(0.5) * (d0 - d1);
  }
}

template <typename scalar_t>
void dwt_nchw(const scalar_t* src, scalar_t* dst, int64_t B, int64_t C,
              int64_t H, int64_t W) {
  const int64_t h = (H + 1) / 2, w = (W + 1) / 2, band = C * h * w;
  at::parallel_for(0, B * C * h, 8, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> zeros(W + 1, scalar_t(0));
    for (int64_t row = begin; row < end; ++row) {  // output row (b, c, i)
      const int64_t i = row % h, bc = row / h, b = bc / C, c = bc % C;
      const scalar_t* top = src + (bc * H + 2 * i) * W;
      const scalar_t* bottom = 2 * i + 1 < H ? top + W : zeros.data();
      scalar_t* ll = dst + ((b * 4 * C + c) * h + i) * w;
      haar_span<scalar_t, 2>(top, top + 1, bottom, bottom + 1, ll, ll + band,
                             ll + 2 * band, ll + 3 * band, W / 2);
      if (W % 2) {  // the last column pairs with a zero column
        haar_span<scalar_t, 2>(top + W - 1, zeros.data(), bottom + W - 1,
                               zeros.data(), ll + w - 1, ll + band + w - 1,
                               ll + 2 * band + w - 1, ll + 3 * band + w - 1,
                               1);
      }
    }
  });
}

template <typename scalar_t>
void dwt_nhwc(const scalar_t* src, scalar_t* dst, int64_t B, int64_t C,
              int64_t H, int64_t W) {
  const int64_t h = (H + 1) / 2, w = (W + 1) / 2;
  at::parallel_for(0, B * h, 2, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> zeros(C, scalar_t(0));
    for (int64_t row = begin; row < end; ++row) {  // output row (b, i)
      const int64_t b = row / h, i = row % h;
      const scalar_t* top = src + (b * H + 2 * i) * W * C;
      const bool has_bottom = 2 * i + 1 < H;
      scalar_t* out = dst + (b * h + i) * w * 4 * C;
      for (int64_t j = 0; j < w; ++j, out += 4 * C) {
        const bool has_right = 2 * j + 1 < W;
        const scalar_t* p00 = top + 2 * j * C;
        const scalar_t* p01 = has_right ? p00 + C : zeros.data();
        const scalar_t* p10 = has_bottom ? p00 + W * C : zeros.data();
        const scalar_t* p11 =
            has_bottom && has_right ? p00 + W * C + C : zeros.data();
        haar_span<scalar_t, 1>(p00, p01, p10, p11, out, out + C, out + 2 * C,
                               out + 3 * C, C);
      }
    }
  });
}

template <typename scalar_t>
void idwt_nchw(const scalar_t* src, scalar_t* dst, int64_t B, int64_t C,
               int64_t h, int64_t w, int64_t H, int64_t W) {
  const int64_t band = C * h * w;
  at::parallel_for(0, B * C * h, 8, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> scratch(2 * w + 2);
    for (int64_t row = begin; row < end; ++row) {  // input row (b, c, i)
      const int64_t i = row % h, bc = row / h, b = bc / C, c = bc % C;
      const scalar_t* ll = src + ((b * 4 * C + c) * h + i) * w;
      scalar_t* top = dst + (bc * H + 2 * i) * W;
      scalar_t* bottom = 2 * i + 1 < H ? top + W : scratch.data();
      inverse_span<scalar_t, 2>(ll, ll + band, ll + 2 * band, ll + 3 * band,
                                top, top + 1, bottom, bottom + 1, W / 2);
      if (W % 2) {  // cropped: the last block keeps its left column
        const int64_t j = w - 1;
        inverse_span<scalar_t, 2>(ll + j, ll + band + j, ll + 2 * band + j,
                                  ll + 3 * band + j, top + W - 1,
                                  scratch.data(), bottom + W - 1,
                                  scratch.data() + 1, 1);
      }
    }
  });
}

template <typename scalar_t>
void idwt_nhwc(const scalar_t* src, scalar_t* dst, int64_t B, int64_t C,
               int64_t h, int64_t w, int64_t H, int64_t W) {
  at::parallel_for(0, B * h, 2, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> scratch(3 * C);
    for (int64_t row = begin; row < end; ++row) {  // input row (b, i)
      const int64_t b = row / h, i = row % h;
      const scalar_t* in = src + (b * h + i) * w * 4 * C;
      scalar_t* top = dst + (b * H + 2 * i) * W * C;
      const bool has_bottom = 2 * i + 1 < H;
      for (int64_t j = 0; j < w; ++j, in += 4 * C) {
        const bool has_right = 2 * j + 1 < W;
        scalar_t* p00 = top + 2 * j * C;
        scalar_t* p01 = has_right ? p00 + C : scratch.data();
        scalar_t* p10 = has_bottom ? p00 + W * C : scratch.data() + C;
        scalar_t* p11 =
            has_bottom && has_right ? p00 + W * C + C : scratch.data() + 2 * C;
        inverse_span<scalar_t, 1>(in, in + C, in + 2 * C, in + 3 * C, p00, p01,
                                  p10, p11, C);
      }
    }
  });
}

// An uninitialised (B, C, H, W) output in the memory layout of the input.
Tensor empty_output(const Tensor& x, std::vector<int64_t> shape, bool cl) {
  return at::empty(shape, x.options(),
                   cl ? at::MemoryFormat::ChannelsLast
                      : at::MemoryFormat::Contiguous);
}

// kernel(src, dst) on the typed data of x and out, for every dtype the
// transforms support.
template <typename Kernel>
Tensor run_typed(const Tensor& x, Tensor out, const Kernel& kernel) {
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "haar_transform", [&] {
        kernel(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
      });
  return out;
}

}  // namespace

// (B, C, H, W) -> (B, 4C, ceil(H/2), ceil(W/2)).
Tensor haar_dwt2d(const Tensor& input) {
  check_input(input, "haar_dwt2d");
  const bool cl = is_channels_last(input);
  const Tensor x = cl ? input : input.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  Tensor out = empty_output(x, {B, 4 * C, (H + 1) / 2, (W + 1) / 2}, cl);
  return run_typed(x, out, [&](const auto* src, auto* dst) {
    if (cl) {
      dwt_nhwc(src, dst, B, C, H, W);
    } else {
      dwt_nchw(src, dst, B, C, H, W);
    }
  });
}

// (B, 4C, h, w) -> (B, C, height, width) with 2h - 1 <= height <= 2h and
// likewise for width; -1 means the full 2h (2w).
Tensor haar_idwt2d(const Tensor& input, int64_t height, int64_t width) {
  check_input(input, "haar_idwt2d");
  TORCH_CHECK(input.size(1) % 4 == 0,
              "haar_idwt2d expects 4*C channels (LL, LH, HL, HH bands), got ",
              input.size(1), " channels");
  const bool cl = is_channels_last(input);
  const Tensor x = cl ? input : input.contiguous();
  const int64_t B = x.size(0), C = x.size(1) / 4, h = x.size(2),
                w = x.size(3);
  const int64_t H = height < 0 ? 2 * h : height;
  const int64_t W = width < 0 ? 2 * w : width;
  TORCH_CHECK(H <= 2 * h && H >= 2 * h - 1 && W <= 2 * w && W >= 2 * w - 1,
              "haar_idwt2d: an output of ", H, "x", W,
              " does not fit bands of ", h, "x", w);
  Tensor out = empty_output(x, {B, C, H, W}, cl);
  return run_typed(x, out, [&](const auto* src, auto* dst) {
    if (cl) {
      idwt_nhwc(src, dst, B, C, h, w, H, W);
    } else {
      idwt_nchw(src, dst, B, C, h, w, H, W);
    }
  });
}

// The torch this file was compiled against (setup.py defines it): a build
// loaded by another torch is not used (wavelet.py warns).
#define WAVEVIT_STRINGIFY_(x) #x
#define WAVEVIT_STRINGIFY(x) WAVEVIT_STRINGIFY_(x)
#ifdef WAVEVIT_TORCH_VERSION
static const char* kBuiltForTorch = WAVEVIT_STRINGIFY(WAVEVIT_TORCH_VERSION);
#else
static const char* kBuiltForTorch = "unknown";
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("torch_version", [] { return std::string(kBuiltForTorch); },
        "The torch version this extension was compiled against");
  m.def("haar_dwt2d", &haar_dwt2d, "Haar DWT, bands on channels",
        py::arg("input"));
  m.def("haar_idwt2d", &haar_idwt2d, "Haar inverse DWT, cropped",
        py::arg("input"), py::arg("height") = -1, py::arg("width") = -1);
}
