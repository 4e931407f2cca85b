import Foundation
import SlimEngine
import Testing

@testable import SlimPerception

/// `HeadDecoder`'s two peak rules on a hand-made head output: two cars side by side in
/// neighbouring 2 m cells (adjacent lanes, 3 m apart), and a cell next to the first that
/// regresses (nearly) the same box, as a cell beside a centre does.
/// 2 m cells, 4 × 4 of them (±4 m).
@Suite("Head decoding: 3×3 local maxima against every cell above the threshold")
struct HeadDecoderTests {
    /// Heatmap logits −8 except car A's centre cell (1, 1), car B's (1, 2) and cell (2, 1), which
    /// predicts car A again with a lower score.
    static func outputs() -> [FloatTensor] {
        let (h, w) = (4, 4)
        let hm = FloatTensor(height: h, width: w, channels: 1)
        hm.fill(-8)
        let off = FloatTensor(height: h, width: w, channels: 2)
        let size = FloatTensor(height: h, width: w, channels: 2)
        let yaw = FloatTensor(height: h, width: w, channels: 2)
        func put(_ i: Int, _ j: Int, logit: Float, x: Float, y: Float) {
            hm[i, j, 0] = logit
            // the centre as an offset from this cell's corner, in cells: x = (j + off) · 2 − 4
            off[i, j, 0] = (x + 4) / 2 - Float(j)
            off[i, j, 1] = (y + 4) / 2 - Float(i)
            size[i, j, 0] = log(4.5)
            size[i, j, 1] = log(1.9)
            // (sin 2ψ, cos 2ψ) = (0, −1): ψ = 90°, the cars point along y and stand side by side in x
            yaw[i, j, 0] = 0
            yaw[i, j, 1] = -1
        }
        put(1, 1, logit: 3, x: -1, y: -1)  // car A
        put(1, 2, logit: 2, x: 1.5, y: -1)  // car B, 2.5 m beside A (1.9 m wide: no overlap)
        put(2, 1, logit: 1, x: -1, y: -1)  // car A again, from the cell below its centre cell
        return [hm, off, size, yaw]
    }

    static func decoder(_ peaks: HeadDecoder.Peaks) -> HeadDecoder {
        HeadDecoder(
            height: 4, width: 4, cell: 2, halfExtent: 4, yawFactor: 0.5, peakThreshold: 0.05, topK: 60, nmsIoU: 0.1,
            peaks: peaks)
    }

    @Test func localMaximaKeepOneOfTwoNeighbours() {
        let boxes = Self.decoder(.localMax3x3).boxes(Self.outputs())
        #expect(boxes.count == 1)
        #expect(abs(boxes[0].x + 1) < 1e-5 && abs(boxes[0].y + 1) < 1e-5)
    }

    @Test func everyCellKeepsBothAndNMSRemovesTheRepeat() throws {
        let boxes = Self.decoder(.aboveThreshold).boxes(Self.outputs())
        try #require(boxes.count == 2, "\(boxes)")
        #expect(abs(boxes[0].x + 1) < 1e-5 && abs(boxes[0].y + 1) < 1e-5)
        #expect(abs(boxes[1].x - 1.5) < 1e-5 && abs(boxes[1].y + 1) < 1e-5)
        #expect(boxes[0].score > boxes[1].score)
        #expect(abs(abs(boxes[0].yaw) - .pi / 2) < 1e-5)
    }
}
