import CKernels

/// The shape fields the float and int8 convolution kernels share (`slim_fconv_args`,
/// `slim_qconv_args`: both C structs satisfy it as imported), filled in one place.
protocol ConvKernelShape {
    var path: Int32 { get set }
    var in_h: Int32 { get set }
    var in_w: Int32 { get set }
    var in_cs: Int32 { get set }
    var ci: Int32 { get set }
    var out_h: Int32 { get set }
    var out_w: Int32 { get set }
    var out_cs: Int32 { get set }
    var co: Int32 { get set }
    var kh: Int32 { get set }
    var kw: Int32 { get set }
    var sh: Int32 { get set }
    var sw: Int32 { get set }
    var dh: Int32 { get set }
    var dw: Int32 { get set }
}

extension slim_fconv_args: ConvKernelShape {}
extension slim_qconv_args: ConvKernelShape {}

extension ConvKernelShape {
    /// Path, input and output sizes, channels per group, kernel, stride and dilation.
    mutating func setShape(
        path: KernelPath, input: (h: Int, w: Int, channels: Int), output: (h: Int, w: Int, channels: Int),
        perGroup: (in: Int, out: Int), geometry g: ConvGeometry
    ) {
        self.path = path.raw
        in_h = Int32(input.h)
        in_w = Int32(input.w)
        in_cs = Int32(input.channels)
        ci = Int32(perGroup.in)
        out_h = Int32(output.h)
        out_w = Int32(output.w)
        out_cs = Int32(output.channels)
        co = Int32(perGroup.out)
        kh = Int32(g.kernel.h)
        kw = Int32(g.kernel.w)
        sh = Int32(g.stride.h)
        sw = Int32(g.stride.w)
        dh = Int32(g.dilation.h)
        dw = Int32(g.dilation.w)
    }
}
