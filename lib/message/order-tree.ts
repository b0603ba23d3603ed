/**
 * A sequence with O(log n) insert at a position, removal of a node, the
 * node at a position and the position of a node: a treap ordered by
 * position (each node knows its subtree's size and its parent). The header
 * edits resolve every milter index against it, so a long answer costs
 * O(n log n) in all instead of a scan and a splice per edit. Pure data
 * structure: knows nothing of headers.
 */

/** One element of the sequence; keep it to find or remove the element later. */
export interface OrderNode<T> {
  value: T
  /** @internal heap priority (random: expected depth O(log n)) */
  pri: number
  /** @internal */
  left: OrderNode<T> | undefined
  /** @internal */
  right: OrderNode<T> | undefined
  /** @internal */
  parent: OrderNode<T> | undefined
  /** @internal number of nodes in this subtree */
  size: number
}

function sizeOf<T>(n: OrderNode<T> | undefined): number {
  return n === undefined ? 0 : n.size
}

function resize<T>(n: OrderNode<T>): void {
  n.size = 1 + sizeOf(n.left) + sizeOf(n.right)
}

/** A sequence of values in a balanced tree. */
export class OrderTree<T> {
  private root: OrderNode<T> | undefined

  /** Number of elements. */
  get size(): number {
    return sizeOf(this.root)
  }

  /** The node at position `k` (0-based), or undefined past the end. */
  at(k: number): OrderNode<T> | undefined {
    let n = this.root
    let i = k
    while (n) {
      const l = sizeOf(n.left)
      if (i < l) n = n.left
      else if (i === l) return n
      else {
        i -= l + 1
        n = n.right
      }
    }
    return undefined
  }

  /** The position of a node of this tree. */
  indexOf(node: OrderNode<T>): number {
    let i = sizeOf(node.left)
    let n = node
    while (n.parent) {
      const p = n.parent
      if (p.right === n) i += sizeOf(p.left) + 1
      n = p
    }
    return i
  }

  /**
   * The number of elements `e` for which `before(e)` holds, when those are
   * exactly the first ones of the sequence (binary search on a monotone test).
   */
  countWhile(before: (value: T) => boolean): number {
    let n = this.root
    let count = 0
    while (n) {
      if (before(n.value)) {
        count += sizeOf(n.left) + 1
        n = n.right
      } else {
        n = n.left
      }
    }
    return count
  }

  /** Inserts `value` so that it stands at position `k` (clamped to 0..size). */
  insertAt(k: number, value: T): OrderNode<T> {
    const node: OrderNode<T> = {
      value,
      pri: Math.random(),
      left: undefined,
      right: undefined,
      parent: undefined,
      size: 1,
    }
    let n = this.root
    if (!n) {
      this.root = node
      return node
    }
    let i = Math.min(Math.max(0, k), n.size)
    for (;;) {
      n.size++
      const l = sizeOf(n.left)
      if (i <= l) {
        if (!n.left) {
          n.left = node
          break
        }
        n = n.left
      } else {
        i -= l + 1
        if (!n.right) {
          n.right = node
          break
        }
        n = n.right
      }
    }
    node.parent = n
    while (node.parent && node.parent.pri > node.pri) this.rotateUp(node)
    return node
  }

  /** Appends `value` at the end. */
  push(value: T): OrderNode<T> {
    return this.insertAt(this.size, value)
  }

  /** Removes a node of this tree. */
  remove(node: OrderNode<T>): void {
    // rotate it down until it has at most one child, then splice it out
    while (node.left && node.right) {
      this.rotateUp(node.left.pri < node.right.pri ? node.left : node.right)
    }
    const child = node.left ?? node.right
    const p = node.parent
    if (child) child.parent = p
    if (!p) this.root = child
    else if (p.left === node) p.left = child
    else p.right = child
    for (let a = p; a; a = a.parent) a.size--
    node.parent = node.left = node.right = undefined
    node.size = 1
  }

  /** The values in order. */
  values(): T[] {
    const out: T[] = []
    const stack: OrderNode<T>[] = []
    let n = this.root
    while (n || stack.length > 0) {
      while (n) {
        stack.push(n)
        n = n.left
      }
      const top = stack.pop() as OrderNode<T>
      out.push(top.value)
      n = top.right
    }
    return out
  }

  /** Makes `x` take its parent's place (sizes of both are recomputed). */
  private rotateUp(x: OrderNode<T>): void {
    const p = x.parent as OrderNode<T>
    const g = p.parent
    if (p.left === x) {
      p.left = x.right
      if (x.right) x.right.parent = p
      x.right = p
    } else {
      p.right = x.left
      if (x.left) x.left.parent = p
      x.left = p
    }
    p.parent = x
    x.parent = g
    if (!g) this.root = x
    else if (g.left === p) g.left = x
    else g.right = x
    resize(p)
    resize(x)
  }
}
